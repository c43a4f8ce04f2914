"""Steering by readiness gate: the pod condition ``connbalance.io/accepting``, on ``pods/status``.

A pod whose spec lists ``readinessGates: [{conditionType: connbalance.io/accepting}]`` is Ready
only while that condition is True, so setting it False takes the pod out of its Services'
EndpointSlices (marked not ready) and out of every load balancer that follows them: reconnects
land on the other pods. ``PodConditionGate`` writes it: False for a shedding pod's drain window,
True once the window has ended, and True on a pod of the pool that has the gate but no condition
yet (until then the kubelet keeps it not Ready).

The window's end is the condition's ``lastTransitionTime`` plus the policy's ``windowSeconds``:
a fact kept on the pod, so an operator that restarts finds and restores what it left False. The
API server keeps that time to the second, so a window may end up to a second early.

Only this condition is written, by a strategic merge patch (pod conditions merge by type): the
kubelet's own conditions are left alone. ``GatedActuator`` closes the gate before the request is
delivered; dry run swaps the whole actuator, so it never closes one.

Given a ``PodChanges``, the sweep that reopens ended windows lists the pool only when something
in its namespace moved or the soonest window it knows of has ended: a balanced pool is not
listed on every tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from connbalance.kube.podchanges import PodChanges
from connbalance.kube.pods import label_selector
from connbalance.model import DrainRequest, PodState
from connbalance.model.settings import ACCEPTING_CONDITION
from connbalance.ports import ActuationError, Actuator, EventSink
from connbalance.ports.clock import SYSTEM_CLOCK, Clock
from connbalance.ports.gates import GateMissing, ReadinessGate

_STRATEGIC: Final = "application/strategic-merge-patch+json"
_TIME: Final = "%Y-%m-%dT%H:%M:%SZ"


def has_gate(pod: Any) -> bool:
    """The pod's spec lists the readiness gate, so the condition decides whether it is Ready."""
    gates = (pod.spec.readiness_gates or []) if pod.spec is not None else []
    return any(g.condition_type == ACCEPTING_CONDITION for g in gates)


def accepting(pod: Any) -> Any | None:
    """The pod's ``connbalance.io/accepting`` condition, if it has one."""
    conditions = (pod.status.conditions or []) if pod.status is not None else []
    return next((c for c in conditions if c.type == ACCEPTING_CONDITION), None)


def window_end(condition: Any, *, window_seconds: float) -> datetime | None:
    """When a False condition's window ends (None: no time on it, so it cannot be judged)."""
    since = condition.last_transition_time
    return None if since is None else since + timedelta(seconds=window_seconds)


def missing_gate_message(pod: str) -> str:
    return (
        f"pod {pod} has no readiness gate {ACCEPTING_CONDITION} in its spec, so steering "
        f"readinessGate cannot take it out of its Services' endpoints and its reconnects land "
        f"anywhere: add readinessGates: [{{conditionType: {ACCEPTING_CONDITION}}}] to the pod "
        f"template"
    )


@dataclass(frozen=True, slots=True)
class _Swept:
    """What a sweep left: the soonest end of a window still closed (None: none is)."""

    soonest: datetime | None


class PodConditionGate:
    """The ``ReadinessGate`` of one pool: the pods ``selector`` picks in ``namespace``."""

    def __init__(
        self,
        *,
        core: Any,
        namespace: str,
        selector: tuple[tuple[str, str], ...],
        window_seconds: float,
        clock: Clock = SYSTEM_CLOCK,
        changes: PodChanges | None = None,
    ) -> None:
        self._core = core
        self._namespace = namespace
        self._selector = label_selector(selector)
        self._window = window_seconds
        self._clock = clock
        self._changes = changes
        self._key = ("gate", namespace, self._selector)

    async def close(self, *, pod: PodState) -> None:
        await asyncio.to_thread(self._close, pod)

    async def reopen_due(self) -> float | None:
        changes = self._changes
        if changes is None:
            return await asyncio.to_thread(self._reopen_due)
        kept = changes.reusable(self._key, self._namespace)
        now = self._clock.now()
        if isinstance(kept, _Swept) and (kept.soonest is None or now < kept.soonest):
            return None if kept.soonest is None else (kept.soonest - now).total_seconds()
        version = changes.version(self._namespace)
        left = await asyncio.to_thread(self._reopen_due)
        ends = None if left is None else now + timedelta(seconds=left)
        changes.keep(self._key, version=version, value=_Swept(soonest=ends))
        return left

    def _close(self, pod: PodState) -> None:
        obj = self._call(f"cannot read pod {pod.name}",
                         lambda: self._core.read_namespaced_pod(pod.name, self._namespace))
        if pod.uid and obj.metadata.uid != pod.uid:
            raise ActuationError(f"pod {pod.name} was replaced: not closing its readiness gate")
        if not has_gate(obj):
            raise GateMissing(missing_gate_message(pod.name))
        now = self._clock.now()
        until = (now + timedelta(seconds=self._window)).strftime(_TIME)
        self._write(obj, status="False", reason="Shedding", at=now,
                    message=f"connbalance: new connections go to other pods until {until}")

    def _reopen_due(self) -> float | None:
        listed = self._call(
            f"cannot list pods {self._selector!r}",
            lambda: self._core.list_namespaced_pod(self._namespace,
                                                   label_selector=self._selector),
        )
        now = self._clock.now()
        soonest: float | None = None
        for obj in listed.items:
            if obj.metadata.deletion_timestamp is not None:
                continue
            condition = accepting(obj)
            if condition is None:
                if has_gate(obj):  # a new pod: not Ready until someone says it accepts
                    self._write(obj, status="True", reason="Accepting", at=now,
                                message="connbalance: accepting new connections")
                continue
            if condition.status == "True":
                continue
            ends = window_end(condition, window_seconds=self._window)
            if ends is None or ends <= now:
                self._write(obj, status="True", reason="WindowEnded", at=now,
                            message="connbalance: the drain window has ended")
                continue
            left = (ends - now).total_seconds()
            soonest = left if soonest is None else min(soonest, left)
        return soonest

    def _write(self, obj: Any, *, status: str, reason: str, message: str, at: datetime) -> None:
        name = obj.metadata.name
        condition = {"type": ACCEPTING_CONDITION, "status": status, "reason": reason,
                     "message": message, "lastTransitionTime": at.strftime(_TIME)}
        # The uid makes the patch fail on a replacement pod that took the same name.
        body = {"metadata": {"uid": obj.metadata.uid}, "status": {"conditions": [condition]}}
        try:
            self._call(
                f"cannot set {ACCEPTING_CONDITION}={status} on pod {name} (pods/status patch; "
                f"the chart grants it with rbac.readinessGate: true)",
                lambda: self._core.patch_namespaced_pod_status(
                    name, self._namespace, body, _content_type=_STRATEGIC),
            )
        finally:  # written or not, the pod may have moved: the next reader lists again
            if self._changes is not None:
                self._changes.bump(self._namespace)

    @staticmethod
    def _call(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (ApiException, HTTPError, OSError) as exc:
            status = f"HTTP {exc.status} {exc.reason}" if isinstance(exc, ApiException) else exc
            raise ActuationError(f"{what}: {status}") from exc


class GatedActuator:
    """``steering: readinessGate``: the pod leaves its endpoints, then the request is delivered.

    A pod without the readiness gate is told about in a Warning and still gets its request:
    cycling without steering under-sheds, it never overshoots."""

    def __init__(self, *, actuator: Actuator, gate: ReadinessGate, events: EventSink) -> None:
        self._actuator = actuator
        self._gate = gate
        self._events = events

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        try:
            await self._gate.close(pod=pod)
        except GateMissing as exc:
            self._events.emit(kind="Warning", reason=exc.reason, message=str(exc))
        await self._actuator.deliver(pod=pod, request=request)


def soonest(*delays: float | None) -> float | None:
    """The shortest of the delays given (None where none is)."""
    given = [d for d in delays if d is not None]
    return min(given) if given else None

