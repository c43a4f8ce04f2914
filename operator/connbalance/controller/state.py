"""What the controller carries from one tick to the next, and how it is written to status."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from connbalance.model import Phase, PodName, PodState, PolicyName, RequestId


@dataclass(frozen=True, slots=True)
class Condition:
    """A metav1.Condition, less the timestamps the kube layer adds."""

    type: Literal["Ready", "MetricsAvailable", "Balanced", "Converging", "Paused"]
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class ControllerState:
    """The controller's memory, persisted by the caller (the resource's status).

    ``episode`` names the current rebalancing run and ``step`` counts its steps; both are also
    written into every request id, so they can be recovered from the pods if status is lost.
    ``judged_revision`` is the pool revision last found balanced or given up on: in postRollout
    mode nothing more is done until the pool changes. ``held_until`` is when a continuous-mode
    balancer that gave up may try that same pool again. ``requested_total`` counts connections
    the agents were *asked* to cycle (what they confirm is theirs to say). ``step_total`` is the
    pool's total load when the last step was issued: its cycled clients come back, so a lower
    total afterwards means some are still reconnecting; ``arriving_total`` is the highest total
    read while waiting for them and ``arriving_at`` when it last rose.
    """

    phase: Phase = Phase.IDLE
    episode: str | None = None
    step: int = 0
    last_step_at: float | None = None
    skews: tuple[float, ...] = ()
    judged_revision: str | None = None
    skew: float | None = None
    reason: str = ""
    last_action: str = ""
    requested_total: int = 0
    held_until: float | None = None
    step_total: float | None = None
    arriving_total: float | None = None
    arriving_at: float | None = None

    def to_status(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["skews"] = list(self.skews)
        return data

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> ControllerState:
        """Read back what ``to_status`` wrote; anything unreadable starts afresh (safe: the pods
        still carry the durable facts)."""
        if not data:
            return cls()
        try:
            return cls(
                phase=Phase(data.get("phase", Phase.IDLE.value)),
                episode=data.get("episode"),
                step=int(data.get("step", 0)),
                last_step_at=_float_or_none(data.get("last_step_at")),
                skews=tuple(float(s) for s in data.get("skews", ())),
                judged_revision=data.get("judged_revision"),
                skew=_float_or_none(data.get("skew")),
                reason=str(data.get("reason", "")),
                last_action=str(data.get("last_action", "")),
                # Written as cycled_total before it was named for what it counts.
                requested_total=int(data.get("requested_total", data.get("cycled_total", 0))),
                held_until=_float_or_none(data.get("held_until")),
                step_total=_float_or_none(data.get("step_total")),
                arriving_total=_float_or_none(data.get("arriving_total")),
                arriving_at=_float_or_none(data.get("arriving_at")),
            )
        except (TypeError, ValueError):
            return cls()

    def with_(self, **changes: Any) -> ControllerState:
        return replace(self, **changes)


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def request_id(*, episode: str, step: int, pod: PodName) -> RequestId:
    return RequestId(f"cb.{episode}.{step}.{pod}")


def step_of(request: str) -> tuple[str, int] | None:
    """The episode and step a request id written by ``request_id`` names; None for any other."""
    parts = request.split(".", 3)
    if len(parts) < 4 or parts[0] != "cb" or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


@dataclass(frozen=True, slots=True)
class IssuedStep:
    """The newest step found on the pods for one policy: recovered, not remembered."""

    episode: str
    step: int
    issued_at: float
    requested: int = 0  # connections its requests on the pods ask for, summed


def newest_step(pods: tuple[PodState, ...], *, policy: PolicyName) -> IssuedStep | None:
    """The latest step this policy wrote to any pod, read from the pods' drain requests."""
    best: IssuedStep | None = None
    for pod in pods:
        drain = pod.drain
        if drain is None or drain.policy != policy or drain.issued_at is None:
            continue
        named = step_of(drain.id)
        if named is None:
            continue
        found = IssuedStep(
            episode=named[0], step=named[1], issued_at=drain.issued_at.timestamp()
        )
        if best is None or (found.issued_at, found.step) > (best.issued_at, best.step):
            best = found
    if best is None:
        return None
    prefix = f"cb.{best.episode}.{best.step}."
    asked = sum(p.drain.count for p in pods if p.drain is not None
                and p.drain.policy == policy and p.drain.id.startswith(prefix))
    return IssuedStep(episode=best.episode, step=best.step, issued_at=best.issued_at,
                      requested=asked)


def new_episode_id(name: PolicyName, revision: str, now: float) -> str:
    """A new episode's id: the policy, the pool's revision and the time, hashed to 10 hex digits."""
    return hashlib.sha256(f"{name}|{revision}|{now:.6f}".encode()).hexdigest()[:10]
