"""What the planner decided, and why."""

from dataclasses import dataclass

from connbalance.model.ids import PodName


@dataclass(frozen=True, slots=True)
class Drain:
    """Cycle ``count`` client connections of ``pod``."""

    pod: PodName
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision over one snapshot of the pool.

    ``skew`` is max/mean over ready pods now; ``expected_skew`` is what the drains should leave
    behind given where reconnects land; ``needed`` is the load above the mean, the least that
    any strategy must move.
    """

    act: bool
    reason: str
    mean: float
    skew: float
    drains: tuple[Drain, ...] = ()
    expected_skew: float | None = None
    needed: float = 0.0
    ignored: tuple[tuple[PodName, str], ...] = ()

    @property
    def total(self) -> int:
        return sum(d.count for d in self.drains)
