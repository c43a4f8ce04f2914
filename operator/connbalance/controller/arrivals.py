"""Clients a step cycled that have not reconnected when the pool is measured again.

They come back: a cycled client redials at once. Until it lands, the pool's total is short of
what it held at the step, the pods that will take it look emptier than they are, and a plan
made on that reading sheds again what is only on its way. The controller waits while they are
still arriving; any still away after that are planned as landing evenly over the ready pods,
as they will once steering is over (the balancer's hash picks any pod). Pure arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from connbalance.model import PodLoad, PodName


def still_away(
    *, step_total: float, measured: Mapping[PodName, PodLoad], target_tolerance: float
) -> float:
    """How many of the step's clients are missing, or 0 while the shortfall is within the
    ceiling's margin (mean x targetTolerance / 2, at least 1): noise, not arrivals."""
    if not measured:
        return 0.0
    total = sum(m.load for m in measured.values())
    margin = max(1.0, total / len(measured) * target_tolerance / 2)
    missing = step_total - total
    return missing if missing > margin else 0.0


def landed_evenly(measured: Mapping[PodName, PodLoad], away: float) -> dict[PodName, PodLoad]:
    """The loads once ``away`` clients have landed, spread evenly over the measured pods."""
    share = away / len(measured) if measured else 0.0
    return {p: replace(m, load=m.load + share) for p, m in measured.items()}
