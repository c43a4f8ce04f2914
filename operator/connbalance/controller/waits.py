"""How long the controller leaves a pool that is not ready to be judged before it looks again.

Where the moment is known (a pod settles, a drain window closes) the loop is asked to come back
just after it; otherwise, and never later than, at ``most`` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

from connbalance.controller.results import Seen, TickResult, tick_result
from connbalance.controller.state import ControllerState
from connbalance.model import Phase, PodLoad, PodName, PodState

# Looked at again this long after the moment, so that it has passed.
MARGIN_SECONDS = 0.1


def until_settled(pods: tuple[PodState, ...], *, now: float, settle: float, most: float) -> float:
    """Seconds until every Ready pod has been Ready for ``settle`` seconds; ``most`` when a
    Ready pod's time is unknown."""
    if any(p.ready and p.ready_since is None for p in pods):
        return most
    left = [settle - (now - p.ready_since) for p in pods if p.ready and p.ready_since is not None]
    return _just_after(max(left), most) if left else most


def measured_too_early(
    state: ControllerState,
    measured: Mapping[PodName, PodLoad],
    seen: Seen,
    *,
    now: float,
    window: float,
    most: float,
) -> TickResult | None:
    """A load measured before the last drain window closed says nothing about that step: wait
    for the window's end, then for a measurement after it."""
    if state.last_step_at is None or not measured:
        return None
    closes = state.last_step_at + window
    if min(m.timestamp for m in measured.values()) >= closes:
        return None
    wait = _just_after(closes - now, most) if now < closes else most
    return tick_result(
        state,
        Phase.COOLING_DOWN,
        "waiting for a measurement taken after the last drain window",
        wait,
        seen=seen,
    )


def _just_after(seconds: float, most: float) -> float:
    return min(most, max(MARGIN_SECONDS, seconds + MARGIN_SECONDS))
