"""Gates on a pool already judged: a pool found balanced or given up on is left alone until it
changes (postRollout mode) or until its hold ends (continuous mode), and a run of steps that did
not lower skew is a stall."""

from __future__ import annotations

from connbalance.controller.results import Seen, TickResult, tick_result
from connbalance.controller.state import ControllerState
from connbalance.model import Phase, Plan, Policy
from connbalance.planner import Verdict

# A step counts as progress only if it lowered skew by at least this share.
PROGRESS = 0.01


def already_judged(
    state: ControllerState,
    *,
    revision: str,
    plan: Plan,
    verdict: Verdict,
    seen: Seen,
    now: float,
    policy: Policy,
) -> TickResult | None:
    """In postRollout mode a pool found balanced, or given up on, waits for the next rollout;
    in continuous mode a pool given up on waits for a change, or for its hold."""
    interval = policy.balance.recheck_seconds  # nothing to do here until the pool changes
    same_pool = state.episode is None and state.judged_revision == revision
    if policy.balance.mode != "postRollout":
        return held(state, plan=plan, seen=seen, now=now, interval=interval) if same_pool else None
    if not same_pool or verdict is Verdict.SETTLING:
        return None
    if verdict is Verdict.WITHIN_TOLERANCE:
        return tick_result(
            state, Phase.BALANCED, plan.reason, interval, balanced=plan.skew, seen=seen
        )
    reason = f"{plan.reason}; postRollout mode waits for the next rollout"
    return tick_result(state, Phase.IDLE, reason, interval, balanced=plan.skew, seen=seen)


def held(
    state: ControllerState, *, plan: Plan, seen: Seen, now: float, interval: float
) -> TickResult | None:
    """A continuous-mode balancer that gave up on this pool leaves it alone until the hold
    ends: trying again at once would churn connections on clients that will not move."""
    if state.held_until is None or now >= state.held_until:
        return None
    wait = state.held_until - now
    reason = f"{plan.reason}; gave up on this pool, trying again in {wait:.0f}s"
    return tick_result(
        state, Phase.DEGRADED, reason, min(interval, wait), balanced=plan.skew, seen=seen
    )


def stalled(state: ControllerState, skew: float, policy: Policy) -> bool:
    """The episode has run out of steps, or its last steps did not lower skew enough."""
    balance = policy.balance
    if state.step >= balance.max_steps:
        return True
    window = balance.max_steps_without_improvement
    return len(state.skews) >= window and skew > state.skews[-window] * (1 - PROGRESS)
