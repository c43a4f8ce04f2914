"""What the agents say they did: the closed loop's other half.

A request is only a request. With ``method: http`` the operator asks each pod's agent
(``GET /status``) what became of the pod's last request and records it beside the count asked:
done (and how many it cycled), running, refused, or never seen. With ``method: annotation`` no
answer can come back this way, and status says "unconfirmed" rather than pretend. An answer
once final is kept in status and not asked for again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from connbalance.model import DrainRequest, PodState

FINAL: Final = frozenset({"done", "rejected"})
UNCONFIRMED: Final = "unconfirmed"  # nothing can tell us (method annotation)
UNSEEN: Final = "unseen"  # the agent answered, and knows no such request
UNREACHABLE: Final = "unreachable"  # the agent did not answer


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


def from_agent(request: DrainRequest, answer: Mapping[str, Any]) -> Outcome:
    """The agent's ``/status`` answer, read for one request."""
    for entry in answer.get("requests") or []:
        if isinstance(entry, Mapping) and entry.get("id") == request.id:
            return Outcome(request=request.id, requested=request.count,
                           state=str(entry.get("state", "")),
                           confirmed=int(entry.get("cycled") or 0),
                           reason=str(entry.get("reason") or ""))
    return Outcome(request=request.id, requested=request.count, state=UNSEEN)


@dataclass(frozen=True, slots=True)
class AgentStatusReader:
    port: int
    token: str
    timeout: float = 3.0

    async def ask(self, pod: PodState, request: DrainRequest) -> Outcome:
        if not pod.ip:
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason="the pod has no IP")
        url = f"http://{pod.ip}:{self.port}/status"
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url, headers=headers
            ) as response:
                response.raise_for_status()
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Outcome(request=request.id, requested=request.count, state=UNREACHABLE,
                           reason=f"{url}: {exc or type(exc).__name__}")
        return from_agent(request, answer if isinstance(answer, Mapping) else {})


async def outcomes(
    pods: Sequence[PodState],
    *,
    policy: str,
    known: Mapping[str, Outcome],
    reader: AgentStatusReader | None,
) -> dict[str, Outcome]:
    """Per pod, the outcome of its last request of this policy: kept when already final, asked
    of the agent when a reader is given, else unconfirmed."""
    mine = [(p, p.drain) for p in pods if p.drain is not None and p.drain.policy == policy]

    async def one(pod: PodState, request: DrainRequest) -> tuple[str, Outcome]:
        before = known.get(pod.name)
        if before is not None and before.request == request.id and before.final:
            return pod.name, before
        if reader is None:
            return pod.name, Outcome(request=request.id, requested=request.count,
                                     state=UNCONFIRMED)
        return pod.name, await reader.ask(pod, request)

    return dict(await asyncio.gather(*(one(p, r) for p, r in mine)))
