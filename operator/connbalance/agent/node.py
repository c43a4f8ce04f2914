"""The node agent: reset mode for every pod on one node, from outside the pods.

One ``NodeAgent`` runs per node (a DaemonSet). It is handed the pods bound to its node as the API
reports them (``nodeapi.py`` watches them) and acts on their drain annotations with the same
protocol as the sidecar: an id is acted on once, ever (a state file per pod uid, so a restart of
the node agent never repeats one), never more than the count asked nor more than its
``max_fraction`` ceiling, closes spread over the window, the most freshly quiet first, steering
by a self-expiring nftables element. Each pod it serves gets a ``ResetAgent`` of its own,
working in the pod's network namespace (``podns.py`` finds it, ``netns.py`` enters it), limited
to the pod's address and the server port its ConnectionBalancer names.

Who may ask: a request is refused unless its ``policy`` names a ConnectionBalancer in the pod's
namespace that selects the pod and says ``actuation.agent: node`` (so a sidecar and the node agent
never both act on one request). The chart's ValidatingAdmissionPolicy lets only the operator
write the annotation; this check is the agent's own, read-only (a ``get`` of the balancer).

Its clock is injected, as every agent's is.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from connbalance.agent.engine import RequestState, RequestStatus
from connbalance.agent.netns import NamespaceUnavailable, NetworkNamespace
from connbalance.agent.nodemetrics import NodeMetrics
from connbalance.agent.podns import Found, NamespaceNotFound, PodRef, Strategy, find_namespace
from connbalance.agent.reset import ResetAgent, ResetUnavailable
from connbalance.agent.state import SeenRequests
from connbalance.model import DrainRequest, InvalidDrainRequest
from connbalance.model.policy import Policy, PolicyError
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)
_UID_LENGTH = 36


@dataclass(frozen=True, slots=True)
class NodePod:
    """A pod bound to this node, as far as the node agent cares."""

    uid: str
    namespace: str
    name: str
    ip: str | None
    labels: tuple[tuple[str, str], ...]
    host_network: bool = False
    drain: str | None = None  # the drain annotation, as written

    @property
    def ref(self) -> PodRef:
        return PodRef(
            uid=self.uid, namespace=self.namespace, name=self.name, host_network=self.host_network
        )

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class PolicyUnreadable(RuntimeError):
    """The ConnectionBalancer could not be read now (the API server is away): try again later."""


class Policies(Protocol):
    def read(self, *, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ConnectionBalancer's ``spec``, None when there is no such object; raises
        PolicyUnreadable when it cannot say."""
        ...


def refusal(
    pod: NodePod, request: DrainRequest, spec: Mapping[str, Any] | None
) -> tuple[str, Policy | None]:
    """Why the node agent must not act on ``request`` for ``pod`` ("" when it may), and the
    policy that asked. ``spec`` is that of the ConnectionBalancer the request names."""
    named = request.policy
    if spec is None:
        return f"names no ConnectionBalancer that exists ({named or 'no policy'})", None
    try:
        policy = Policy.from_spec(spec)
    except PolicyError as exc:
        return f"ConnectionBalancer {named} is invalid ({exc})", None
    labels = dict(pod.labels)
    if any(labels.get(key) != value for key, value in policy.selector):
        return f"ConnectionBalancer {named} does not select pod {pod}", None
    if policy.actuation.agent != "node":
        return (
            f"ConnectionBalancer {named} has actuation.agent {policy.actuation.agent}: the "
            "pod's own agent acts, not the node agent",
            None,
        )
    return "", policy


def policy_name(pod: NodePod, request: DrainRequest) -> tuple[str, str] | None:
    """The (namespace, name) of the ConnectionBalancer a request names, if in the pod's
    namespace: a balancer selects pods of its own namespace only."""
    namespace, sep, name = request.policy.rpartition("/")
    if not sep or not name or namespace != pod.namespace:
        return None
    return namespace, name


@dataclass(slots=True)
class _Served:
    pod: NodePod
    port: int
    found: Found
    engine: ResetAgent


class NodeAgent:
    """Serves the drain requests of the pods on ``node``. Feed it ``sync`` (every pod on the
    node, after each list), ``update`` (one pod changed) and ``forget`` (one pod is gone)."""

    def __init__(
        self,
        *,
        node: str,
        strategies: Sequence[Strategy],
        policies: Policies,
        max_fraction: float,
        state_dir: Path | None = None,
        namespaces: Iterable[str] = (),
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.node = node
        self.clock = clock
        self.max_fraction = max_fraction
        self._strategies = list(strategies)
        self._policies = policies
        self._state_dir = state_dir
        self._namespaces = frozenset(namespaces)
        self._rng = rng
        self._pods: dict[str, NodePod] = {}
        self._last: dict[str, str] = {}
        self._served: dict[str, _Served] = {}
        self._refused: dict[str, dict[str, RequestStatus]] = {}
        self.metrics = NodeMetrics(served=self._engines)

    # --- what the watch hands in ---------------------------------------------------------------

    async def sync(self, pods: Iterable[NodePod]) -> None:
        pods = list(pods)
        present = {pod.uid for pod in pods}
        for uid in [uid for uid in self._pods if uid not in present]:
            await self.forget(uid)
        self._drop_stale_state(present)
        for pod in pods:
            await self.update(pod)

    async def update(self, pod: NodePod) -> None:
        self._pods[pod.uid] = pod
        if self._namespaces and pod.namespace not in self._namespaces:
            return
        if pod.drain is None or pod.drain == self._last.get(pod.uid):
            return
        self._last[pod.uid] = pod.drain
        await self._offer(pod, pod.drain)

    async def forget(self, uid: str) -> None:
        """The pod is gone: stop serving it and let its namespace go."""
        self._pods.pop(uid, None)
        self._last.pop(uid, None)
        self._refused.pop(uid, None)
        served = self._served.pop(uid, None)
        if served is not None:
            await self._release(served)
        path = self._state_file(uid)
        if path is not None:
            path.unlink(missing_ok=True)

    async def stop(self) -> None:
        for uid in list(self._served):
            await self._release(self._served.pop(uid))

    # --- what it reports -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        uids = sorted(set(self._served) | set(self._refused), key=lambda u: str(self._pods.get(u)))
        return {
            "mode": "node",
            "node": self.node,
            "pods": [self._pod_entry(uid) for uid in uids if uid in self._pods],
        }

    def pod_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod's status in the sidecar's ``/status`` shape, None when nothing was asked."""
        for uid, pod in self._pods.items():
            asked = uid in self._served or uid in self._refused
            if asked and (pod.namespace, pod.name) == (namespace, name):
                entry = self._pod_entry(uid)
                return {k: entry[k] for k in ("mode", "active", "cycled_total", "requests")}
        return None

    def engine(self, uid: str) -> ResetAgent | None:
        served = self._served.get(uid)
        return served.engine if served is not None else None

    def _engines(self) -> list[tuple[NodePod, ResetAgent]]:
        return [(s.pod, s.engine) for s in self._served.values()]

    def _pod_entry(self, uid: str) -> dict[str, Any]:
        pod = self._pods[uid]
        refused = [s.to_wire() for s in self._refused.get(uid, {}).values()]
        entry: dict[str, Any] = {"namespace": pod.namespace, "name": pod.name, "uid": uid}
        served = self._served.get(uid)
        if served is None:
            return {**entry, "mode": "reset", "active": 0, "cycled_total": 0, "requests": refused}
        wire = served.engine.status().to_wire()
        wire["requests"] = [*refused, *wire["requests"]]
        found = served.found
        return {
            **entry,
            "address": pod.ip,
            "port": served.port,
            "netns": f"{found.source}: {found.detail}",
            **wire,
        }

    # --- acting --------------------------------------------------------------------------------

    async def _offer(self, pod: NodePod, value: str) -> None:
        try:
            request = DrainRequest.from_json(value, now=self.clock.now())
        except InvalidDrainRequest as exc:
            self.metrics.count("invalid")
            log.warning("pod %s: ignoring drain annotation: %s", pod, exc)
            return
        if self._known(pod.uid, request.id):
            self.metrics.count("duplicate")
            return
        try:
            reason, policy = await self._authorize(pod, request)
        except PolicyUnreadable as exc:
            # Not decided: the next list of the pods offers the annotation again.
            self._last.pop(pod.uid, None)
            log.warning("pod %s request %s: %s; will try again", pod, request.id, exc)
            return
        if policy is None:
            self._refuse(pod, request, reason, result="unauthorized")
            return
        try:
            served = await self._serve(pod, policy.actuation.server_port)
        except (NamespaceNotFound, NamespaceUnavailable, ResetUnavailable, OSError) as exc:
            self._refuse(pod, request, str(exc), result="unreachable")
            return
        status = await served.engine.submit(request)
        self.metrics.count("duplicate" if status.duplicate else _result(status))
        log.info(
            "pod %s request %s: %s%s", pod, status.id, status.state.value,
            f" ({status.reason})" if status.reason else "",
        )  # fmt: skip

    async def _authorize(self, pod: NodePod, request: DrainRequest) -> tuple[str, Policy | None]:
        named = policy_name(pod, request)
        if named is None:
            return (
                f"policy {request.policy or '(none)'} names no ConnectionBalancer in the pod's "
                f"namespace {pod.namespace}",
                None,
            )
        namespace, name = named
        spec = await asyncio.to_thread(self._policies.read, namespace=namespace, name=name)
        return refusal(pod, request, spec)

    def _known(self, uid: str, request_id: str) -> bool:
        if request_id in self._refused.get(uid, {}):
            return True
        served = self._served.get(uid)
        if served is not None:
            return served.engine.request_status(request_id) is not None
        path = self._state_file(uid)
        return path is not None and path.exists() and request_id in SeenRequests(path=path)

    def _refuse(self, pod: NodePod, request: DrainRequest, reason: str, *, result: str) -> None:
        status = RequestStatus(
            id=request.id, count=request.count, cycled=0, forced=0,
            state=RequestState.REJECTED, reason=reason,
        )  # fmt: skip
        self._refused.setdefault(pod.uid, {})[request.id] = status
        self.metrics.count(result)
        log.warning("pod %s request %s refused: %s", pod, request.id, reason)

    async def _serve(self, pod: NodePod, port: int) -> _Served:
        served = self._served.get(pod.uid)
        if served is not None:
            if served.port != port:
                raise ResetUnavailable(
                    f"pod {pod} is served on port {served.port}, not {port}: two "
                    "ConnectionBalancers with different serverPort select it"
                )
            return served
        if not pod.ip:
            raise NamespaceNotFound(f"pod {pod} has no address yet")
        found, strategy = await asyncio.to_thread(find_namespace, pod.ref, self._strategies)
        namespace = self._enter(pod, found)
        if strategy is not None and not strategy.still(pod.ref, found):
            namespace.close()
            raise NamespaceNotFound(f"pod {pod}: {found.detail} left the pod before it was pinned")
        engine = ResetAgent(
            port=port, address=pod.ip, max_fraction=self.max_fraction,
            state_file=self._state_file(pod.uid), rng=self._rng, clock=self.clock,
            namespace=namespace,
        )  # fmt: skip
        try:
            await engine.start()
        except BaseException:
            namespace.close()
            raise
        served = _Served(pod=pod, port=port, found=found, engine=engine)
        self._served[pod.uid] = served
        log.info(
            "serving pod %s: port %d on %s, network namespace from %s (%s)",
            pod, port, pod.ip, found.source, found.detail,
        )  # fmt: skip
        return served

    def _enter(self, pod: NodePod, found: Found) -> NetworkNamespace:
        if found.path is None:
            return NetworkNamespace.own()
        return NetworkNamespace.open(found.path, name=str(pod))

    async def _release(self, served: _Served) -> None:
        try:
            await served.engine.stop()
        finally:
            served.engine.namespace.close()

    def _state_file(self, uid: str) -> Path | None:
        return None if self._state_dir is None else self._state_dir / f"{uid}.json"

    def _drop_stale_state(self, present: set[str]) -> None:
        """State of pods no longer on this node: a uid is never reused, so it can go."""
        if self._state_dir is None:
            return
        for path in self._state_dir.glob("*.json"):
            if len(path.stem) == _UID_LENGTH and path.stem not in present:
                path.unlink(missing_ok=True)


def _result(status: RequestStatus) -> str:
    return "rejected" if status.state is RequestState.REJECTED else "accepted"


__all__ = ["NodeAgent", "NodePod", "Policies", "PolicyUnreadable", "policy_name", "refusal"]
