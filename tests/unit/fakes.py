"""Small stand-ins for the controller's ports, for unit tests only. Each takes plain data."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from connbalance.model import DrainRequest, PodLoad, PodName, PodState
from connbalance.ports import ActuationError, FleetView, MetricsError


@dataclass
class FakeClock:
    now: float = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class DictLoads:
    """Loads by pod name, measured at the clock's time; ``error`` is raised instead if set."""

    clock: FakeClock
    values: dict[str, float]
    error: MetricsError | None = None

    async def read(self, *, pods: Sequence[PodName]) -> Mapping[PodName, PodLoad]:
        if self.error is not None:
            raise self.error
        return {
            PodName(p): PodLoad(pod=PodName(p), load=self.values[p], timestamp=self.clock.now)
            for p in pods
        }


@dataclass
class ListFleet:
    """Pods whose drain request plays the part of the pod annotation."""

    pods: list[PodState]
    rollout_complete: bool = True

    @classmethod
    def ready(cls, names: Sequence[str], *, since: float = 0.0) -> ListFleet:
        return cls(
            [
                PodState(name=PodName(n), ready=True, ready_since=since, uid=f"uid-{n}")
                for n in names
            ]
        )

    async def observe(self) -> FleetView:
        uids = ",".join(sorted(p.uid for p in self.pods))
        revision = hashlib.sha256(uids.encode()).hexdigest()[:12]
        return FleetView(
            pods=tuple(self.pods), rollout_complete=self.rollout_complete, revision=revision
        )

    def annotate(self, name: PodName, request: DrainRequest) -> None:
        self.pods = [replace(p, drain=request) if p.name == name else p for p in self.pods]

    def replace_pod(self, name: str, *, uid: str, since: float) -> None:
        self.pods = [
            replace(p, uid=uid, ready_since=since, drain=None) if p.name == name else p
            for p in self.pods
        ]


@dataclass
class AnnotatingActuator:
    """Writes each request onto the fleet's pod; ``fail_on`` names pods whose delivery fails."""

    fleet: ListFleet
    delivered: list[tuple[PodName, DrainRequest]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        if pod.name in self.fail_on:
            raise ActuationError(f"cannot annotate {pod.name}")
        self.fleet.annotate(pod.name, request)
        self.delivered.append((pod.name, request))


@dataclass
class ListEvents:
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def emit(self, *, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]
