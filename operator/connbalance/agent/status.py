"""Where a drain request and an agent stand: the shapes ``/status`` and the state file carry."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class RequestState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"


class CloseOutcome(enum.StrEnum):
    GRACEFUL = "graceful"
    FORCED = "forced"


@dataclass(frozen=True, slots=True)
class RequestStatus:
    """Where one drain request stands. ``duplicate`` is set on the answer to a repeated id."""

    id: str
    count: int
    cycled: int
    forced: int
    state: RequestState
    reason: str = ""
    duplicate: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "count": self.count,
            "cycled": self.cycled,
            "forced": self.forced,
            "state": self.state.value,
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RequestStatus:
        return cls(
            id=str(data["id"]),
            count=int(data["count"]),
            cycled=int(data.get("cycled", 0)),
            forced=int(data.get("forced", 0)),
            state=RequestState(data.get("state", "done")),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """``degraded`` says why the agent cannot cycle at all (empty when it can)."""

    mode: str
    active: int
    cycled_total: int
    requests: tuple[RequestStatus, ...]
    degraded: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "active": self.active,
            "cycled_total": self.cycled_total,
            "requests": [r.to_wire() for r in self.requests],
            "degraded": self.degraded,
        }


__all__ = ["AgentStatus", "CloseOutcome", "RequestState", "RequestStatus"]
