"""The decision: whether to act on a pool, and how many connections each pod should cycle.

``decide`` asks three questions in turn, each in a function of its own: can the input be used
(``_unusable``), should the pool be left alone for now (``_reason_to_wait``), and which step
lowers the skew within the caps (``_step``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from connbalance.model import BalanceSpec, Drain, Plan, PodLoad, PodName, PodState, Policy
from connbalance.planner.landing import Landing, expected_loads, receivers, shed_targets

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


@dataclass(frozen=True, slots=True)
class _Pool:
    """The ready pods' loads and the figures every later question uses."""

    values: Mapping[PodName, float]
    total: float
    mean: float
    skew: float
    # The load above the mean: the least that any strategy must move.
    needed: float

    @classmethod
    def of(cls, values: Mapping[PodName, float]) -> _Pool:
        total = sum(values.values())
        mean = total / len(values)
        return cls(
            values=values,
            total=total,
            mean=mean,
            skew=max(values.values()) / mean if mean > 0 else 1.0,
            needed=sum(v - mean for v in values.values() if v > mean),
        )


@dataclass(frozen=True, slots=True)
class _Trigger:
    """The skew above which the planner acts: 1 + tolerance, or 1 + targetTolerance while an
    episode is running (hysteresis)."""

    value: float
    setting: str

    @classmethod
    def of(cls, balance: BalanceSpec, *, engaged: bool) -> _Trigger:
        if engaged:
            return cls(1 + balance.target_tolerance, "targetTolerance")
        return cls(1 + balance.tolerance, "tolerance")


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
    """``plan``, and the verdict behind it."""
    ready = sorted((p for p in pods if p.ready), key=lambda p: p.name)
    ignored = tuple(
        (p.name, "not Ready") for p in sorted(pods, key=lambda p: p.name) if not p.ready
    )
    unusable = _unusable(ready, loads, policy=policy, now=now)
    if unusable is not None:
        verdict, reason = unusable
        return Plan(act=False, reason=reason, mean=0.0, skew=1.0, ignored=ignored), verdict
    pool = _Pool.of({p.name: loads[p.name].load for p in ready})
    trigger = _Trigger.of(policy.balance, engaged=engaged)
    waiting = _reason_to_wait(pool, ready, balance=policy.balance, trigger=trigger, now=now)
    if waiting is None:
        step, binding = _step(pool, policy=policy, trigger=trigger, ignored=ignored)
        if step is not None:
            return step, Verdict.ACT
        waiting = (
            Verdict.CAPPED,
            f"skew {pool.skew:.3f} over {trigger.value:.3f}, but the caps leave no step that "
            f"lowers it{binding}",
        )
    verdict, reason = waiting
    return (
        Plan(act=False, reason=reason, mean=pool.mean, skew=pool.skew, ignored=ignored),
        verdict,
    )


def _unusable(
    ready: Sequence[PodState], loads: Mapping[PodName, PodLoad], *, policy: Policy, now: float
) -> tuple[Verdict, str] | None:
    """Why the snapshot cannot be judged at all: too few ready pods, or their loads missing or
    stale."""
    if len(ready) < 2:
        return Verdict.TOO_FEW_PODS, f"{len(ready)} ready pod(s): need at least 2 to balance"
    missing = [p.name for p in ready if p.name not in loads]
    if missing:
        return Verdict.MISSING_LOAD, f"no load measured for ready pod {missing[0]}"
    oldest = min(ready, key=lambda p: loads[p.name].timestamp)
    age = now - loads[oldest.name].timestamp
    limit = policy.metrics.max_staleness_seconds
    if age > limit:
        return (
            Verdict.STALE,
            f"load of {oldest.name} is {age:.0f}s old, over maxStalenessSeconds {limit:g}",
        )
    return None


def _reason_to_wait(
    pool: _Pool,
    ready: Sequence[PodState],
    *,
    balance: BalanceSpec,
    trigger: _Trigger,
    now: float,
) -> tuple[Verdict, str] | None:
    """Why a measured pool is left alone for now: a pod not settled, too few connections to be
    worth moving, or a skew within the trigger."""
    unsettled = [
        p for p in ready if p.ready_since is None or now - p.ready_since < balance.settle_seconds
    ]
    if unsettled:
        pod = unsettled[0]
        since = "an unknown time" if pod.ready_since is None else f"{now - pod.ready_since:.0f}s"
        return (
            Verdict.SETTLING,
            f"{pod.name} has been Ready for {since}, "
            f"under settleSeconds {balance.settle_seconds:g}",
        )
    if pool.total < balance.min_connections:
        return (
            Verdict.BELOW_MINIMUM,
            f"pool holds {pool.total:g}, under minConnections {balance.min_connections}",
        )
    if pool.skew <= trigger.value:
        return (
            Verdict.WITHIN_TOLERANCE,
            f"skew {pool.skew:.3f} within 1 + {trigger.setting} = {trigger.value:.3f}",
        )
    return None


def _step(
    pool: _Pool,
    *,
    policy: Policy,
    trigger: _Trigger,
    ignored: tuple[tuple[PodName, str], ...],
) -> tuple[Plan | None, str]:
    """The largest step within the caps that is expected to lower the skew (None if the caps
    leave none), and the cap that bound it, as words for reasons ("" if none did)."""
    # The agent and the readiness gate both keep reconnects off the shedding pods.
    landing = Landing.UNIFORM if policy.actuation.steering == "none" else Landing.STEERED
    # Aim halfway into the target band so that measurement noise does not retrigger at once.
    ceiling = pool.mean * (1 + policy.balance.target_tolerance / 2)
    ideal = shed_targets(pool.values, ceiling=ceiling, landing=landing)
    scale, binding = _scale_for_caps(pool.values, ideal, policy=policy, total=pool.total)
    if landing is Landing.STEERED:
        scale, binding = _scale_for_room(pool.values, ideal, ceiling, scale=scale, binding=binding)
    for _ in range(_MAX_HALVINGS):
        counts = {p: math.floor(s * scale) for p, s in ideal.items()}
        counts = {p: c for p, c in counts.items() if c > 0}
        if not counts:
            break
        if landing is Landing.STEERED:
            # Every pod but the receivers is steered off, a pod over the ceiling with too
            # little to cycle included: what lands on a full pod must be cycled again.
            sheds = {p: float(c) for p, c in counts.items()}
            kept_open = receivers(pool.values, dict.fromkeys(ideal, 0.0) | sheds,
                                  ceiling=ceiling).pods
            counts |= {p: 0 for p in pool.values if p not in kept_open and p not in counts}
        after = expected_loads(
            pool.values, {p: float(c) for p, c in counts.items()}, landing=landing
        )
        expected = max(after.values()) / pool.mean
        if expected < pool.skew:
            drains = _drains(pool, counts, after, landing=landing, binding=binding)
            reason = (
                f"skew {pool.skew:.3f} over {trigger.value:.3f}: cycle {sum(counts.values())} on "
                f"{sum(1 for c in counts.values() if c)} pod(s), expected skew "
                f"{expected:.3f}{binding}"
            )
            return (
                Plan(
                    act=True,
                    reason=reason,
                    mean=pool.mean,
                    skew=pool.skew,
                    drains=drains,
                    expected_skew=expected,
                    needed=pool.needed,
                    ignored=ignored,
                ),
                binding,
            )
        scale /= 2
    return None, binding


def _drains(
    pool: _Pool,
    counts: Mapping[PodName, int],
    after: Mapping[PodName, float],
    *,
    landing: Landing,
    binding: str,
) -> tuple[Drain, ...]:
    """One drain per pod named in ``counts``, by pod name; a count of 0 only steers."""
    return tuple(
        Drain(
            pod=p,
            count=c,
            reason=f"load {pool.values[p]:g} vs mean {pool.mean:.1f}: expected {after[p]:.1f} "
            f"after {landing.value} reconnects{binding}"
            if c
            else f"load {pool.values[p]:g}: steered off so reconnects land on emptier pods",
        )
        for p, c in sorted(counts.items())
    )


def _scale_for_room(
    values: Mapping[PodName, float],
    ideal: Mapping[PodName, float],
    ceiling: float,
    *,
    scale: float,
    binding: str,
) -> tuple[float, str]:
    """Scale a steered step down to what its receivers can take without rising over the
    ceiling: each connection cycled then moves once, and the rest waits for the next step."""
    wanted = sum(ideal.values()) * scale
    room = receivers(values, {p: s * scale for p, s in ideal.items()}, ceiling=ceiling)
    if wanted <= room.room + 1e-9 or wanted <= 0:
        return scale, binding
    return (
        scale * room.room / wanted,
        f" (limited by the room below {ceiling:.1f} on {len(room.pods)} emptier pod(s))",
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
