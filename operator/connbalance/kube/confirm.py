"""What the agents say they did: the closed loop's other half.

A request is only a request. Beside the count asked, status records what the agent says
became of the pod's last request: done (and how many it cycled), running, refused, not reported
yet, or never seen. Where the answer comes from depends on who acts and how requests travel:

- a sidecar with ``method: http``: its ``GET /status`` (``AgentStatusReader``);
- the node agent (``agent: node``), when the operator knows its port: ``GET
  /v1/pods/NAMESPACE/NAME`` on the pod's node address (``NodeAgentStatusReader``);
- a sidecar with ``method: annotation``: its own metrics, through Prometheus
  (``connbalance.kube.confirmprom``).

Where nothing can answer (the node agent's port not given), status says "unconfirmed" rather
than pretend. An answer once final is kept in status and not asked for again.

A request written as an annotation reaches its agent later, through a watch or a file: until
its deadline, an agent that does not know it yet has "not reported" it (``pending``, no
Event); past the deadline no agent starts it any more, and it was never seen (``unseen``).
A POST (``method: http``) is delivered before it is read back, so there an unknown id is
``unseen`` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import aiohttp

from connbalance.kube.agenttls import AgentTls, agent_url, connect_options, tls_failure
from connbalance.model import DrainRequest, PodState

FINAL: Final = frozenset({"done", "rejected"})
UNCONFIRMED: Final = "unconfirmed"  # nothing can tell us
PENDING: Final = "pending"  # delivered as an annotation, not reported yet, before its deadline
UNSEEN: Final = "unseen"  # the agent answered, and knows no such request
UNREACHABLE: Final = "unreachable"  # the agent (or Prometheus) did not answer

Asked = Sequence[tuple[PodState, DrainRequest]]


@dataclass(frozen=True, slots=True)
class Outcome:
    request: str
    requested: int
    state: str
    confirmed: int | None = None
    reason: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_status(self) -> dict[str, Any]:
        return {
            "lastDrain": self.request,
            "lastDrainRequested": self.requested,
            "lastDrainState": self.state,
            **({"lastDrainConfirmed": self.confirmed} if self.confirmed is not None else {}),
            **({"lastDrainReason": self.reason} if self.reason else {}),
        }

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> Outcome | None:
        request, state = entry.get("lastDrain"), entry.get("lastDrainState")
        if not isinstance(request, str) or not isinstance(state, str):
            return None
        confirmed = entry.get("lastDrainConfirmed")
        return cls(request=request, requested=int(entry.get("lastDrainRequested") or 0),
                   state=state, confirmed=int(confirmed) if confirmed is not None else None,
                   reason=str(entry.get("lastDrainReason") or ""))


class Confirmations(Protocol):
    """Reads, for each pod asked about, what became of its last request."""

    async def read(self, asked: Asked) -> Mapping[str, Outcome]: ...


def from_agent(request: DrainRequest, answer: Mapping[str, Any]) -> Outcome:
    """An agent's answer in the shape of ``/status``, read for one request."""
    for entry in answer.get("requests") or []:
        if isinstance(entry, Mapping) and entry.get("id") == request.id:
            return Outcome(request=request.id, requested=request.count,
                           state=str(entry.get("state", "")),
                           confirmed=int(entry.get("cycled") or 0),
                           reason=str(entry.get("reason") or ""))
    return Outcome(request=request.id, requested=request.count, state=UNSEEN)


def not_reported(
    request: DrainRequest, *, now: float, grace_seconds: float, reason: str, never: str = UNSEEN
) -> Outcome:
    """An annotation's request the answer does not name: pending until its deadline (plus the
    ``grace_seconds`` the answer may lag), then ``never`` (unseen, or unreachable)."""
    late = request.deadline + timedelta(seconds=grace_seconds)
    state = PENDING if datetime.fromtimestamp(now, UTC) < late else never
    return Outcome(request=request.id, requested=request.count, state=state, reason=reason)


async def _get_json(
    url: str, *, headers: Mapping[str, str], timeout: float, tls: AgentTls | None = None
) -> tuple[int, Any]:
    """The status and decoded body; raises aiohttp.ClientError, TimeoutError or ValueError."""
    timeouts = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=timeouts) as session, session.get(
        url, headers=dict(headers), **connect_options(tls)
    ) as response:
        if response.status == 404:
            return 404, None
        response.raise_for_status()
        return response.status, await response.json()


@dataclass(frozen=True, slots=True)
class AgentStatusReader:
    """A sidecar's ``/status`` on the pod's address (``method: http``), over HTTPS with
    ``tls``."""

    port: int
    token: str
    timeout: float = 3.0
    tls: AgentTls | None = None

    async def ask(self, pod: PodState, request: DrainRequest) -> Outcome:
        if not pod.ip:
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason="the pod has no IP")
        url = agent_url(pod.ip, self.port, "/status", tls=self.tls)
        try:
            _, answer = await _get_json(url, headers={"Authorization": f"Bearer {self.token}"},
                                        timeout=self.timeout, tls=self.tls)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            refused = tls_failure(url, exc) if isinstance(exc, aiohttp.ClientError) else None
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason=refused or f"{url}: {exc or type(exc).__name__}")
        return from_agent(request, answer if isinstance(answer, Mapping) else {})

    async def read(self, asked: Asked) -> dict[str, Outcome]:
        found = await asyncio.gather(*(self.ask(p, r) for p, r in asked))
        return {p.name: o for (p, _), o in zip(asked, found, strict=True)}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAgentStatusReader:
    """The node agent's answer for one pod, on the address of the pod's node (``hostIP``)."""

    port: int
    namespace: str
    timeout: float = 3.0
    clock: Callable[[], float] = field(default=time.time)

    async def ask(self, pod: PodState, request: DrainRequest) -> Outcome:
        if not pod.host_ip:
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason="the pod has no hostIP: it runs on no node yet")
        url = agent_url(pod.host_ip, self.port, f"/v1/pods/{self.namespace}/{pod.name}",
                        tls=None)
        try:
            code, answer = await _get_json(url, headers={}, timeout=self.timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason=f"the node agent at {url}: {exc or type(exc).__name__}")
        outcome = from_agent(request, answer if code == 200 and isinstance(answer, Mapping)
                             else {})
        if outcome.state != UNSEEN:
            return outcome
        return not_reported(request, now=self.clock(), grace_seconds=0.0,
                            reason=f"the node agent at {url} knows no request {request.id}")

    async def read(self, asked: Asked) -> dict[str, Outcome]:
        found = await asyncio.gather(*(self.ask(p, r) for p, r in asked))
        return {p.name: o for (p, _), o in zip(asked, found, strict=True)}


async def outcomes(
    pods: Sequence[PodState],
    *,
    policy: str,
    known: Mapping[str, Outcome],
    reader: Confirmations | None,
) -> dict[str, Outcome]:
    """Per pod, the outcome of its last request of this policy: kept when already final, read
    from the agents (all pods at once) when a reader is given, else unconfirmed."""
    mine = [(p, p.drain) for p in pods if p.drain is not None and p.drain.policy == policy]
    kept: dict[str, Outcome] = {}
    asked: list[tuple[PodState, DrainRequest]] = []
    for pod, request in mine:
        before = known.get(pod.name)
        if before is not None and before.request == request.id and before.final:
            kept[pod.name] = before
        elif reader is None:
            kept[pod.name] = Outcome(request=request.id, requested=request.count,
                                     state=UNCONFIRMED)
        else:
            asked.append((pod, request))
    found = await reader.read(asked) if reader is not None and asked else {}
    return {p.name: kept[p.name] if p.name in kept else found[p.name] for p, _ in mine}
