"""The decision: whether to act on a pool, and how many connections each pod should cycle."""

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum

from connbalance.model import Drain, Plan, PodLoad, PodName, PodState, Policy
from connbalance.planner.landing import Landing, expected_loads, shed_targets, steer_only

# When a cap binds, the whole step is scaled down by the same factor, which keeps the expected
# skew strictly improving; these halvings absorb what integer rounding takes away.
_MAX_HALVINGS = 8


class Verdict(StrEnum):
    """Why the plan acts or not, as a word the controller can map to a phase."""

    ACT = "Act"
    TOO_FEW_PODS = "TooFewPods"
    MISSING_LOAD = "MissingLoad"
    STALE = "Stale"
    SETTLING = "Settling"
    BELOW_MINIMUM = "BelowMinimum"
    WITHIN_TOLERANCE = "WithinTolerance"
    CAPPED = "Capped"


def plan(
    *,
    loads: Mapping[PodName, PodLoad],
    pods: Sequence[PodState],
    policy: Policy,
    now: float,
    engaged: bool = False,
) -> Plan:
    """Decide over one snapshot. ``engaged`` is True while a rebalancing episode is running: the
    trigger is then 1 + targetTolerance instead of 1 + tolerance (hysteresis)."""
    plan_, _ = decide(loads=loads, pods=pods, policy=policy, now=now, engaged=engaged)
    return plan_


def decide(
    *,
    loads: Mapping[PodName, PodLoad],
    pods: Sequence[PodState],
    policy: Policy,
    now: float,
    engaged: bool = False,
) -> tuple[Plan, Verdict]:
    balance = policy.balance
    ignored = tuple(
        (p.name, "not Ready") for p in sorted(pods, key=lambda p: p.name) if not p.ready
    )
    ready = sorted((p for p in pods if p.ready), key=lambda p: p.name)

    def hold(
        verdict: Verdict, reason: str, mean: float = 0.0, skew: float = 1.0
    ) -> tuple[Plan, Verdict]:
        return Plan(act=False, reason=reason, mean=mean, skew=skew, ignored=ignored), verdict

    if len(ready) < 2:
        return hold(Verdict.TOO_FEW_PODS, f"{len(ready)} ready pod(s): need at least 2 to balance")
    missing = [p.name for p in ready if p.name not in loads]
    if missing:
        return hold(Verdict.MISSING_LOAD, f"no load measured for ready pod {missing[0]}")
    oldest = min(ready, key=lambda p: loads[p.name].timestamp)
    age = now - loads[oldest.name].timestamp
    if age > policy.metrics.max_staleness_seconds:
        return hold(
            Verdict.STALE,
            f"load of {oldest.name} is {age:.0f}s old, over maxStalenessSeconds "
            f"{policy.metrics.max_staleness_seconds:g}",
        )

    values = {p.name: loads[p.name].load for p in ready}
    total = sum(values.values())
    mean = total / len(values)
    skew = max(values.values()) / mean if mean > 0 else 1.0
    needed = sum(v - mean for v in values.values() if v > mean)

    unsettled = [
        p for p in ready if p.ready_since is None or now - p.ready_since < balance.settle_seconds
    ]
    if unsettled:
        pod = unsettled[0]
        since = "an unknown time" if pod.ready_since is None else f"{now - pod.ready_since:.0f}s"
        return hold(
            Verdict.SETTLING,
            f"{pod.name} has been Ready for {since}, "
            f"under settleSeconds {balance.settle_seconds:g}",
            mean,
            skew,
        )
    if total < balance.min_connections:
        return hold(
            Verdict.BELOW_MINIMUM,
            f"pool holds {total:g}, under minConnections {balance.min_connections}",
            mean,
            skew,
        )
    trigger = 1 + (balance.target_tolerance if engaged else balance.tolerance)
    if skew <= trigger:
        which = "targetTolerance" if engaged else "tolerance"
        return hold(
            Verdict.WITHIN_TOLERANCE,
            f"skew {skew:.3f} within 1 + {which} = {trigger:.3f}",
            mean,
            skew,
        )

    landing = Landing.STEERED if policy.actuation.steer else Landing.UNIFORM
    # Aim halfway into the target band so that measurement noise does not retrigger at once.
    ceiling = mean * (1 + balance.target_tolerance / 2)
    ideal = shed_targets(values, ceiling=ceiling, landing=landing)
    scale, binding = _scale_for_caps(values, ideal, policy=policy, total=total)
    for _ in range(_MAX_HALVINGS):
        counts = {p: math.floor(s * scale) for p, s in ideal.items()}
        counts = {p: c for p, c in counts.items() if c > 0}
        if not counts:
            break
        if landing is Landing.STEERED:
            sheds = {p: float(c) for p, c in counts.items()}
            counts |= dict.fromkeys(steer_only(values, sheds, ceiling=ceiling), 0)
        after = expected_loads(values, {p: float(c) for p, c in counts.items()}, landing=landing)
        expected = max(after.values()) / mean
        if expected < skew:
            drains = tuple(
                Drain(
                    pod=p,
                    count=c,
                    reason=f"load {values[p]:g} vs mean {mean:.1f}: expected {after[p]:.1f} "
                    f"after {landing.value} reconnects{binding}"
                    if c
                    else f"load {values[p]:g}: steered off so reconnects land on emptier pods",
                )
                for p, c in sorted(counts.items())
            )
            reason = (
                f"skew {skew:.3f} over {trigger:.3f}: cycle {sum(counts.values())} on "
                f"{sum(1 for c in counts.values() if c)} pod(s), expected skew "
                f"{expected:.3f}{binding}"
            )
            return (
                Plan(
                    act=True,
                    reason=reason,
                    mean=mean,
                    skew=skew,
                    drains=drains,
                    expected_skew=expected,
                    needed=needed,
                    ignored=ignored,
                ),
                Verdict.ACT,
            )
        scale /= 2
    return hold(
        Verdict.CAPPED,
        f"skew {skew:.3f} over {trigger:.3f}, but the caps leave no step that lowers it{binding}",
        mean,
        skew,
    )


def _scale_for_caps(
    values: Mapping[PodName, float],
    ideal: Mapping[PodName, float],
    *,
    policy: Policy,
    total: float,
) -> tuple[float, str]:
    """One factor for every pod's shed, set by whichever cap binds hardest (named for reasons)."""
    balance = policy.balance
    scale, binding = 1.0, ""
    for pod, shed in ideal.items():
        fraction_cap = math.floor(balance.max_fraction_per_step * values[pod])
        for cap, name in (
            (fraction_cap, "maxFractionPerStep"),
            (balance.max_connections_per_step, "maxConnectionsPerStep"),
        ):
            if shed > cap and cap / shed < scale:
                scale, binding = cap / shed, f" (capped by {name} on {pod})"
    budget = math.floor(balance.max_pool_fraction_per_step * total)
    wanted = sum(ideal.values()) * scale
    if wanted > budget:
        scale, binding = scale * budget / wanted, " (capped by maxPoolFractionPerStep)"
    return scale, binding
