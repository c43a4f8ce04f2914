"""Where cycled clients land, and how much each pod must shed for a given ceiling.

Two models of the balancer:

- ``UNIFORM``: every reconnect picks any ready pod with probability 1/N, the shedding pods
  included. Shedding s_i from pod i leaves it, in expectation, at l_i - s_i + S/N, S = sum s_i.
  The least S that brings every shedding pod to the ceiling T solves
  S = sum_{i in A} (l_i - T + S/N), i.e. S = sum_A (l_i - T) / (1 - |A|/N). With a single
  shedding pod and T = mean this is the familiar (l - mean) * N/(N-1).
- ``STEERED``: shedding pods take no new connections for the window, so reconnects spread over
  the others only and each cycled connection moves exactly once: s_i = l_i - T.

Only pods above the mean ever shed: cycling a pod below the mean is pure churn. When steering,
the reconnects spread evenly over the pods left open, so a step may move only as much as the
fullest of them has room for below the ceiling; more would lift it above the mean, and the next
step would have to cycle those same clients again. ``receivers`` picks the emptiest pods that
carry the most, and every other pod is steered off with nothing to cycle.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from connbalance.model import PodName


class Landing(StrEnum):
    UNIFORM = "uniform"
    STEERED = "steered"


def shed_targets(
    loads: Mapping[PodName, float], *, ceiling: float, landing: Landing
) -> dict[PodName, float]:
    """Ideal (uncapped, fractional) sheds that bring every pod to at most ``ceiling``."""
    n = len(loads)
    if n < 2:
        return {}
    mean = sum(loads.values()) / n
    above = sorted((p for p, v in loads.items() if v > ceiling), key=lambda p: (-loads[p], p))
    if not above:
        return {}
    if landing is Landing.STEERED:
        return {p: loads[p] - ceiling for p in above}
    # Grow the shedding set down the sorted loads until no pod outside it would end above the
    # ceiling once the others' reconnects land on it. Never past the mean.
    candidates = sorted((p for p, v in loads.items() if v > mean), key=lambda p: (-loads[p], p))
    chosen: list[PodName] = []
    total = 0.0
    for pod in candidates:
        chosen.append(pod)
        if len(chosen) >= n:
            break
        total = sum(loads[p] - ceiling for p in chosen) / (1 - len(chosen) / n)
        rest = [loads[p] for p in loads if p not in chosen]
        if max(rest) + total / n <= ceiling + 1e-9:
            break
    sheds = {p: loads[p] - ceiling + total / n for p in chosen}
    return {p: s for p, s in sheds.items() if s > 0}


@dataclass(frozen=True, slots=True)
class Receivers:
    """The pods a steered step leaves open, and how many reconnects they can take."""

    pods: frozenset[PodName]
    # The most that can land on them, spread evenly, with none lifted above the ceiling.
    room: float


def receivers(
    loads: Mapping[PodName, float], sheds: Mapping[PodName, float], *, ceiling: float
) -> Receivers:
    """The emptiest pods not shedding that can take ``sum(sheds)`` reconnects, steering off as
    few as that allows; if none can take it all, the set that takes the most.

    Reconnects spread evenly over the open pods (the balancer's hash picks any of them), so k
    open pods take at most k times the room of the fullest of them. Opening a fuller pod adds a
    share but lowers that room: the best k is found by trying each.
    """
    wanted = sum(sheds.values())
    open_ = sorted((p for p in loads if p not in sheds), key=lambda p: (loads[p], p))
    rooms = [k * max(0.0, ceiling - loads[open_[k - 1]]) for k in range(1, len(open_) + 1)]
    if not rooms:
        return Receivers(pods=frozenset(), room=0.0)
    enough = min(wanted, max(rooms))
    k = max(k for k in range(1, len(rooms) + 1) if rooms[k - 1] >= enough - 1e-9)
    return Receivers(pods=frozenset(open_[:k]), room=rooms[k - 1])


def expected_loads(
    loads: Mapping[PodName, float], sheds: Mapping[PodName, float], *, landing: Landing
) -> dict[PodName, float]:
    """Loads expected once ``sheds`` were cycled and their clients reconnected."""
    total = sum(sheds.values())
    if landing is Landing.UNIFORM or not sheds:
        share = total / len(loads) if loads else 0.0
        return {p: v - sheds.get(p, 0.0) + share for p, v in loads.items()}
    # A pod named in ``sheds`` is steered off, even with nothing to shed (steer-only).
    receivers = [p for p in loads if p not in sheds]
    if not receivers:  # nowhere to steer to: behaves as uniform
        return expected_loads(loads, sheds, landing=Landing.UNIFORM)
    share = total / len(receivers)
    return {p: v - sheds[p] if p in sheds else v + share for p, v in loads.items()}
