"""One reconcile of one ConnectionBalancer: re-read it, tick its controller, write what changed.

Level-triggered: everything is read again each time (the resource as the watch last delivered
it, with the status last written, ``connbalance.kube.balancers``; its pods through the fleet;
the load), so a reconcile can run at any moment, twice, or after a restart, and do the right
thing. Status is written only when it differs from what the API server holds; Events only on
transitions (``connbalance.kube.events``). The loop that calls this sleeps for the seconds it
returns.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connbalance.controller import Condition, ControllerState, TickResult
from connbalance.kube.balancers import Balancers
from connbalance.kube.confirm import UNREACHABLE, UNSEEN, Outcome, outcomes
from connbalance.kube.crd import GROUP, PLURAL, VERSION
from connbalance.kube.events import Kind, TransitionEvents
from connbalance.kube.gates import soonest
from connbalance.kube.metrics import record, record_confirmed
from connbalance.kube.podchanges import PodChanges
from connbalance.kube.secrets import SpecError
from connbalance.kube.status import conditions, status_patch
from connbalance.kube.wiring import (
    DEFAULT_PROMETHEUS_URL,
    Wired,
    build_controller,
    readiness_gate,
)
from connbalance.model import Phase, Policy, PolicyError, PolicyName
from connbalance.ports import ActuationError

log = logging.getLogger(__name__)

PAUSE_ANNOTATION = "connbalance.io/paused"
# After a readiness-gate condition could not be restored, try again this soon.
GATE_RETRY_SECONDS = 5.0
Key = tuple[str, str]
# Posts one Event on an object given as a minimal body (apiVersion, kind, metadata).
PostEvent = Callable[[Mapping[str, Any], Kind, str, str], None]


@dataclass(frozen=True, slots=True)
class Apis:
    core: Any
    apps: Any
    custom: Any
    post_event: PostEvent
    default_prometheus_url: str = DEFAULT_PROMETHEUS_URL
    node_agent_port: int = 0  # where node agents answer on each node; 0: none deployed
    changes: PodChanges | None = None  # what the watches saw move; None: list on every tick
    balancers: Balancers | None = None  # the balancers as last watched; None: a GET every tick


def policy_of(spec: Mapping[str, Any]) -> Policy:
    """The validated policy of ``spec``; raises PolicyError. The same spec is validated once:
    every tick of every balancer would otherwise parse it twice."""
    return _parsed(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _parsed(spec: str) -> Policy:
    return Policy.from_spec(json.loads(spec))


def pause_source(spec: Mapping[str, Any], meta: Mapping[str, Any]) -> str | None:
    """What pauses the balancer, if anything: the spec, or the annotation (as KEDA's is)."""
    if spec.get("paused") is True:
        return "spec.paused"
    annotations = meta.get("annotations") or {}
    if str(annotations.get(PAUSE_ANNOTATION, "")).strip().lower() == "true":
        return f"annotation {PAUSE_ANNOTATION}"
    return None


async def reconcile(key: Key, apis: Apis) -> float | None:
    """Returns the seconds until the balancer wants to be looked at again (None: when woken)."""
    body: Mapping[str, Any] | None = apis.balancers.body(key) if apis.balancers else None
    if body is None:
        body = await asyncio.to_thread(_read, apis.custom, key)
        if body is None:
            return None  # deleted: its loop is stopped by the watch
        if apis.balancers is not None:
            apis.balancers.fetched(key, body)
    namespace, name = key
    meta = body.get("metadata") or {}
    previous: Mapping[str, Any] = body.get("status") or {}
    generation = meta.get("generation")
    state = ControllerState.from_status(previous.get("controller"))
    events = TransitionEvents.resuming(
        lambda kind, reason, message: apis.post_event(_ref(body), kind, reason, message),
        scope=f"{generation}/{state.episode}/{state.step}",
        posted=previous.get("postedEvents") or [],
    )
    context = {"namespace": namespace, "balancer": name, "episode": state.episode,
               "step": state.step}
    new, requeue = await _next_status(key, apis, body, state, events, context)
    new["postedEvents"] = events.posted
    if _differs(previous, new):
        try:
            written = await asyncio.to_thread(
                _write_status, apis.custom, key, _merge_patch(previous, new)
            )
        except BaseException:
            if apis.balancers is not None:
                apis.balancers.forget_status(key)  # it may have been written: read it back
            raise
        if apis.balancers is not None:
            apis.balancers.wrote(key, written)
        _log_change(previous, new, context)
    return requeue


async def _next_status(
    key: Key,
    apis: Apis,
    body: Mapping[str, Any],
    state: ControllerState,
    events: TransitionEvents,
    context: Mapping[str, Any],
) -> tuple[dict[str, Any], float | None]:
    namespace, name = key
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    previous: Mapping[str, Any] = body.get("status") or {}
    generation = meta.get("generation")
    paused = pause_source(spec, meta)
    reopen_in = await _reopen_gates(apis, namespace, spec, events)
    if paused is not None:
        return _paused_status(paused, previous, generation), reopen_in
    policy_name = PolicyName(f"{namespace}/{name}")
    try:
        policy = policy_of(spec)
        wired = await asyncio.to_thread(
            build_controller,
            name=policy_name,
            namespace=namespace,
            policy=policy,
            events=events,
            core=apis.core,
            apps=apis.apps,
            default_prometheus_url=apis.default_prometheus_url,
            node_agent_port=apis.node_agent_port,
            changes=apis.changes,
        )
    except (PolicyError, SpecError) as exc:
        events.emit(kind="Warning", reason="InvalidSpec", message=str(exc))
        log.warning("invalid spec: %s", exc, extra=dict(context))
        return _invalid_status(str(exc), previous, generation), None
    result = await wired.controller.tick(state)
    record(policy_name, result)
    if result.waiting:
        log.debug("waiting: %s", result.waiting, extra=dict(context))
    _post_on_pods(apis, namespace, result, dry_run=policy.dry_run)
    status = status_patch(result, policy=policy_name, generation=generation, previous=previous)
    status["conditions"] = _with_paused(status["conditions"], None, generation)
    await _confirm(status, previous, result, policy_name, wired, events)
    closed = policy.actuation.steering == "readinessGate" and result.issued and not policy.dry_run
    window = policy.actuation.window_seconds if closed else None
    return status, soonest(result.requeue_after, reopen_in, window)


async def _reopen_gates(
    apis: Apis, namespace: str, spec: Mapping[str, Any], events: TransitionEvents
) -> float | None:
    """Pods this balancer took out of their endpoints go back once their window ends, whatever
    the spec says now (paused, dry run, another steering) and after an operator restart. The
    seconds until the next window ends, if one is open."""
    try:
        policy = policy_of(spec)
    except PolicyError:
        return None  # reported as InvalidSpec
    gate = readiness_gate(core=apis.core, namespace=namespace, policy=policy,
                          changes=apis.changes)
    try:
        return await gate.reopen_due()
    except ActuationError as exc:
        events.emit(kind="Warning", reason="ReadinessGateNotRestored", message=str(exc))
        log.warning("%s", exc, extra={"namespace": namespace})
        return GATE_RETRY_SECONDS


async def _confirm(
    status: dict[str, Any],
    previous: Mapping[str, Any],
    result: TickResult,
    policy: PolicyName,
    wired: Wired,
    events: TransitionEvents,
) -> None:
    """Beside each pod's last request, what its agent says became of it; a refusal, a short
    count or silence is told once, as an Event."""
    known = {
        str(e.get("name")): o
        for e in previous.get("pods") or []
        if isinstance(e, Mapping) and (o := Outcome.from_status(e)) is not None
    }
    found = await outcomes(result.seen.pods, policy=policy, known=known,
                           reader=wired.confirmations)
    for entry in status.get("pods") or []:
        outcome = found.get(str(entry.get("name")))
        if outcome is None:
            continue
        entry.update(outcome.to_status())
        if known.get(entry["name"]) != outcome:
            _tell(outcome, str(entry["name"]), policy, events)


def _tell(outcome: Outcome, pod: str, policy: PolicyName, events: TransitionEvents) -> None:
    if outcome.state == "done" and outcome.confirmed is not None:
        record_confirmed(policy, outcome.confirmed)
        if outcome.confirmed < outcome.requested:
            events.emit(kind="Warning", reason="DrainIncomplete",
                        message=f"{pod} cycled {outcome.confirmed} of {outcome.requested} "
                        f"({outcome.request}): {outcome.reason or 'too few connections'}")
    elif outcome.state == "rejected":
        events.emit(kind="Warning", reason="DrainRefused",
                    message=f"{pod} refused {outcome.request}: {outcome.reason}")
    elif outcome.state in (UNSEEN, UNREACHABLE):
        events.emit(kind="Warning", reason="DrainUnconfirmed",
                    message=f"{pod}: the agent has not confirmed {outcome.request} "
                    f"({outcome.state}{': ' + outcome.reason if outcome.reason else ''})")


def _paused_status(
    source: str, previous: Mapping[str, Any], generation: int | None
) -> dict[str, Any]:
    status = {k: v for k, v in previous.items() if k != "postedEvents"}
    status.update(phase=Phase.PAUSED.value, reason=f"paused by {source}",
                  observedGeneration=generation)
    status["conditions"] = _with_paused(previous.get("conditions") or [], source, generation)
    return status


def _with_paused(
    current: list[dict[str, Any]], source: str | None, generation: int | None
) -> list[dict[str, Any]]:
    if source is None:
        paused_now = Condition("Paused", "False", "NotPaused", "")
    else:
        reason = "SpecPaused" if source == "spec.paused" else "AnnotationPaused"
        message = f"paused by {source}: nothing is drained until it is lifted"
        paused_now = Condition("Paused", "True", reason, message)
    others = [c for c in current if c.get("type") != "Paused"]
    paused = conditions([paused_now],
                        [c for c in current if c.get("type") == "Paused"], generation=generation)
    return others + paused


def _invalid_status(
    message: str, previous: Mapping[str, Any], generation: int | None
) -> dict[str, Any]:
    return {
        "phase": Phase.DEGRADED.value,
        "reason": message,
        "observedGeneration": generation,
        "conditions": conditions(
            [Condition("Ready", "False", "InvalidSpec", message)],
            previous.get("conditions") or [],
            generation=generation,
        ),
        **({"controller": previous["controller"]} if "controller" in previous else {}),
    }


def _post_on_pods(apis: Apis, namespace: str, result: TickResult, *, dry_run: bool) -> None:
    """Each drain is also told on the pod it concerns, where someone debugging the pod looks."""
    for request in result.would_issue if dry_run else result.issued:
        pod = next((p for p in result.seen.pods if request.id.endswith(f".{p.name}")), None)
        if pod is None:
            continue
        verb = "would be asked (dry run)" if dry_run else "asked"
        what = f"to cycle {request.count} connections" if request.count else "to refuse new ones"
        ref = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod.name, "namespace": namespace, "uid": pod.uid}}
        apis.post_event(ref, "Normal", "DrainRequested",
                        f"{verb} {what} by {request.policy} ({request.id})")


def _ref(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConnectionBalancer",
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }


def _read(custom: Any, key: Key) -> Mapping[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        body: Mapping[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, key[0], PLURAL, key[1]
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return body


def _write_status(custom: Any, key: Key, patch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object as the API server stored it."""
    written: Mapping[str, Any] = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, key[0], PLURAL, key[1], {"status": patch}
    )
    return written


def _stored(value: Any) -> Any:
    """``value`` as the API server keeps it after a JSON merge patch: a null in an object
    removes its key, so an object's None members are not there to compare with."""
    if isinstance(value, Mapping):
        return {k: _stored(v) for k, v in value.items() if v is not None}
    return value


def _differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(previous.get(k) != _stored(v) for k, v in new.items())


def _merge_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from ``previous`` to ``new``: changed keys, and None for the dropped."""
    patch = {k: v for k, v in new.items() if previous.get(k) != _stored(v)}
    patch.update({k: None for k in previous if k not in new})
    return patch


def _log_change(
    previous: Mapping[str, Any], new: Mapping[str, Any], context: Mapping[str, Any]
) -> None:
    if previous.get("phase") != new.get("phase") or previous.get("reason") != new.get("reason"):
        log.info("phase %s -> %s: %s", previous.get("phase") or "none", new.get("phase"),
                 new.get("reason") or "", extra=dict(context))

