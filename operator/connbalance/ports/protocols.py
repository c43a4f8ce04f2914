"""The port interfaces. Adapters are structural: no inheritance needed."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from connbalance.model import DrainRequest, PodLoad, PodName, PodState


@dataclass(frozen=True, slots=True)
class FleetView:
    """The pool now. ``revision`` changes whenever a pod is replaced (it hashes pod uids), which
    is how a finished rollout is told apart from a pool already judged."""

    pods: tuple[PodState, ...]
    rollout_complete: bool
    revision: str


class LoadSource(Protocol):
    async def read(self, *, pods: Sequence[PodName]) -> Mapping[PodName, PodLoad]:
        """One load per pod named. Raises a MetricsError rather than return doubtful data."""
        ...


class Fleet(Protocol):
    async def observe(self) -> FleetView:
        """The selected pods, their readiness and last drain request. Raises FleetError."""
        ...


class Actuator(Protocol):
    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        """Hand the request to the pod's agent, durably. Raises ActuationError."""
        ...


class EventSink(Protocol):
    def emit(self, *, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        """Record something a person should see (a Kubernetes Event, a log line)."""
        ...
