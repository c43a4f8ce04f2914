"""The least any strategy could do in a run: time to balance, and connections to cycle. Pure.

- **Time**: the controller may act only once every pod has been Ready for ``settle`` seconds,
  needs one measurement after the rollout to see the skew, spreads its closes over one drain
  window, and each cycled client waits its reconnect delay before it lands elsewhere:
  ``settle + measurement + window + reconnect``. The measurement is what a fresh reading costs:
  the bench's sampling interval with a direct scrape (the interval at which balance is seen),
  Prometheus's scrape interval with a real one.
- **Connections, steered**: when reconnects are kept off the shedding pods, each cycled
  connection moves once, and the least is the excess: the load above the mean (``needed``).
- **Connections, not steered**: every reconnect lands on any of the N pods, the shedding ones
  included. Shedding s_i from pod i leaves it at l_i - s_i + S/N (S = the sum of the s_i); the
  least S that brings every pod to a ceiling T solves ``S = sum_i max(0, l_i - T + S/N)``.
  With T at the mean this forces every pod to shed down to it (S = N x (mean - min l), most of
  the pool), so T is the bench's bound for balanced, ``1.10 x mean``: the least a strategy that
  does not aim its reconnects must move to count as balanced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connbalance_sim import measures
from connbalance_sim.measures import Record

if TYPE_CHECKING:
    from connbalance_sim.scenario import Scenario

PROMETHEUS_SCRAPE_SECONDS = 1.0  # connbalance_sim.prom's scrape_interval


@dataclass(frozen=True, slots=True)
class TimeBound:
    settle: float
    measurement: float
    window: float
    reconnect: float

    @property
    def seconds(self) -> float:
        return self.settle + self.measurement + self.window + self.reconnect


def time_bound(*, settle: float, measurement: float, window: float,
               reconnect: float) -> TimeBound:
    for name, value in (("settle", settle), ("measurement", measurement), ("window", window),
                        ("reconnect", reconnect)):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, not {value}")
    return TimeBound(settle=settle, measurement=measurement, window=window, reconnect=reconnect)


def excess(loads: Sequence[float]) -> float:
    """The load above the mean: the least to cycle when each cycled connection moves once."""
    if not loads:
        return 0.0
    mean = sum(loads) / len(loads)
    return sum(load - mean for load in loads if load > mean)


def uniform_fixed_point(loads: Sequence[float], *, ceiling: float) -> float:
    """The least S with ``S = sum_i max(0, l_i - ceiling + S/N)``, exactly.

    ``f(S) = sum_i max(0, l_i - T + S/N)`` is piecewise linear: with the k fullest pods
    shedding, f(S) = sum_{top k} (l_i - T) + k S / N. Its slope k/N stays under 1 while k < N,
    so f(S) - S falls from f(0) >= 0 and crosses 0 once; the crossing is in the segment where
    the top k shed and the (k+1)-th does not, at S = sum_{top k} (l_i - T) / (1 - k/N).
    """
    n = len(loads)
    if n == 0:
        return 0.0
    mean = sum(loads) / n
    if ceiling < mean - 1e-12:
        raise ValueError(f"ceiling {ceiling:g} is under the mean {mean:g}: no pool reaches it")
    ordered = sorted(loads, reverse=True)
    if ceiling <= mean + 1e-12:
        # Every pod must shed down to the mean: the last segment, f(S) = S from there on.
        return n * (mean - ordered[-1])
    over = 0.0  # sum over the top k of (l_i - T)
    for k in range(n):
        s = over / (1 - k / n)
        # The top k shed at s (l_k-th - T + s/N >= 0 holds by the previous round) and the
        # next one does not: the root is in this segment.
        if ordered[k] - ceiling + s / n <= 1e-12:
            return max(0.0, s)
        over += ordered[k] - ceiling
    raise AssertionError("unreachable: with a ceiling over the mean, f(S) - S turns negative")


def residual(loads: Sequence[float], *, ceiling: float, shed: float) -> float:
    """``f(S) - S``: zero at the fixed point (for tests and checks)."""
    n = len(loads)
    return sum(max(0.0, load - ceiling + shed / n) for load in loads) - shed


def for_scenario(scenario: Scenario) -> TimeBound:
    """The time bound of a scenario's controller timing and clients."""
    measurement = (scenario.sample_interval if scenario.metrics == "scrape"
                   else PROMETHEUS_SCRAPE_SECONDS)
    return time_bound(settle=scenario.settle, measurement=measurement, window=scenario.window,
                      reconnect=scenario.backoff_ms / 1000)


def result(record: Record, scenario: Scenario) -> dict[str, Any]:
    """A run's bounds and its figures as ratios to them, for the bench's ``results``: the
    loads are those the rollout left (``measures.settled_sample``)."""
    bound = for_scenario(scenario)
    sample = measures.settled_sample(record)
    loads = list(sample.loads.values()) if sample is not None else []
    mean = sum(loads) / len(loads) if loads else 0.0
    steered = excess(loads)
    uniform = uniform_fixed_point(loads, ceiling=mean * measures.BALANCED) if mean > 0 else 0.0
    moved, ttb = measures.cycled(record), measures.time_to_balance(record)
    return {
        "bound_time_s": round(bound.seconds, 2),
        "bound_cycled_steered": round(steered, 1),
        "bound_cycled_uniform": round(uniform, 1),
        "time_over_bound": None if ttb is None else round(ttb / bound.seconds, 2),
        "cycled_over_steered_bound": round(moved / steered, 2) if steered > 0 else None,
        "cycled_over_uniform_bound": round(moved / uniform, 2) if uniform > 0 else None,
    }
