"""Pods missing from the metrics for a moment: too new to have been scraped, or in a scrape gap.

A pod that turned Ready a moment ago has not been scraped yet: Prometheus has no series for it
until its next scrape. That is the pool settling, not the metrics failing, so such a pod missing
from an answer is waited for (no Warning, no MetricsAvailable False) while it has been Ready for
less than settleSeconds or maxStalenessSeconds, whichever is longer; so is an answer with no
series at all when every pod asked for is that new (a whole pool replaced between two scrapes).

A pod that was in the last good answer and is missing now is in a scrape gap: one scrape failed
or timed out (a busy Prometheus marks the target's series stale), and the next will very likely
bring it back. For maxStalenessSeconds from the first look that missed it the tick waits and
says nothing: no plan, no drain, no Warning, no condition flipped, no status written. The gap is
timed from that first miss, not from the last reading: a balanced pool is read only every
balancedIntervalSeconds, so its last reading is often older than maxStalenessSeconds when one
scrape fails (at 100 balancers x 10 pods, timed from the reading, 6 balancers flipped to
Degraded and back in two minutes). What was read is remembered per pod UID, so a pod replaced
by one of the same name (a StatefulSet's) never inherits its predecessor's reading.

Missing for longer, either is the metrics' fault, and told as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connbalance.controller.results import Seen, TickResult, tick_result, unchanged
from connbalance.controller.state import ControllerState
from connbalance.controller.waits import MARGIN_SECONDS
from connbalance.model import Phase, PodLoad, PodName, PodState, Policy
from connbalance.ports import EventSink, MetricsEmpty, MetricsError, MetricsPodMissing


class LastReadings:
    """When each pod, by UID, last had a good reading (its sample's time), and when a look first
    missed it since.

    The one thing a controller carries in memory between ticks: its caller keeps one per
    balancer across reconciles (the controller itself is rebuilt each time). It can only make a
    tick wait, never act; losing it (an operator restart) makes a gap the error it always was.
    """

    __slots__ = ("_at", "_missed")

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._missed: dict[str, float] = {}

    def note(self, pods: Sequence[PodState], measured: Mapping[PodName, PodLoad]) -> None:
        """Remember the readings of a good answer. Pods no longer in the pool are forgotten."""
        uids = {p.name: p.uid for p in pods if p.uid}
        kept = {uid: self._at[uid] for uid in uids.values() if uid in self._at}
        for name, load in measured.items():
            uid = uids.get(name)
            if uid is not None:
                kept[uid] = max(load.timestamp, kept.get(uid, load.timestamp))
        self._at = kept
        self._missed = {}

    def last(self, pod: PodState) -> float | None:
        """The time of ``pod``'s last good reading, if it had one."""
        return self._at.get(pod.uid) if pod.uid else None

    def missed(self, pod: PodState, *, now: float) -> float:
        """When a look first missed ``pod`` since its last good reading: ``now`` the first time."""
        return self._missed.setdefault(pod.uid, now)


@dataclass(frozen=True, slots=True)
class Pace:
    """How soon a tick comes back: ``soon`` while something is about to change, else
    ``interval``."""

    soon: float
    interval: float


def metrics_failed(
    exc: MetricsError,
    state: ControllerState,
    pods: tuple[PodState, ...],
    *,
    readings: LastReadings,
    policy: Policy,
    now: float,
    pace: Pace,
    events: EventSink,
) -> TickResult:
    """What a tick whose load could not be read returns: Settling while the missing pods are too
    new to have been scraped; its state unchanged, and nothing said, through a scrape gap; else
    a Warning Event and Degraded, with MetricsAvailable False."""
    if why := not_scraped_yet(exc, pods, policy=policy, now=now):
        return tick_result(state, Phase.SETTLING, why, pace.soon, seen=Seen(pods=pods))
    gap, left = scrape_gap(exc, pods, readings=readings, policy=policy, now=now)
    if gap:
        # Nothing is planned on a partial reading, and nothing is said about it either.
        return unchanged(state, gap, min(pace.soon, max(MARGIN_SECONDS, left)))
    events.emit(kind="Warning", reason=exc.reason, message=str(exc))
    return tick_result(
        state,
        Phase.DEGRADED,
        str(exc),
        pace.interval,
        metrics=("False", exc.reason),
        seen=Seen(pods=pods),
    )


def not_scraped_yet(
    exc: MetricsError, pods: Sequence[PodState], *, policy: Policy, now: float
) -> str:
    """Why the pool is settling, if every pod ``exc`` says is missing is too new to have been
    scraped; empty when the error is anything else (or names a pod that is not new)."""
    missing = _missing(exc, pods)
    if not missing or not all(_new(p, policy=policy, now=now) for p in missing):
        return ""
    return (
        f"{', '.join(p.name for p in missing)} not in the metrics yet: Ready for under "
        f"{grace_seconds(policy):g}s, it may not have been scraped"
    )


def scrape_gap(
    exc: MetricsError,
    pods: Sequence[PodState],
    *,
    readings: LastReadings,
    policy: Policy,
    now: float,
) -> tuple[str, float]:
    """Why the tick should wait, and for at most how long, if every pod ``exc`` says is missing
    was read before and first missed under maxStalenessSeconds ago (or is too new to have been
    scraped), and at least one was read; ("", 0) when the error is anything else, or a pod has
    been missing too long."""
    missing = _missing(exc, pods)
    staleness = policy.metrics.max_staleness_seconds
    gaps: list[tuple[PodState, float]] = []
    for pod in missing:
        if readings.last(pod) is not None:
            since = readings.missed(pod, now=now)
            if now - since < staleness:
                gaps.append((pod, since))
                continue
        if not _new(pod, policy=policy, now=now):
            return "", 0.0
    if not gaps:
        return "", 0.0
    names = ", ".join(p.name for p, _ in gaps)
    first = min(since for _, since in gaps)
    why = (
        f"{names} missing from the metrics for {now - first:.0f}s after a good reading: a "
        f"scrape gap, waited for up to maxStalenessSeconds ({staleness:g}s)"
    )
    return why, first + staleness - now


def _missing(exc: MetricsError, pods: Sequence[PodState]) -> tuple[PodState, ...]:
    """The ready pods ``exc`` says have no series: named, or all of them for an empty answer;
    none when it names a pod that is not a ready pod of the pool, or no pod at all."""
    ready = {p.name: p for p in pods if p.ready}
    if isinstance(exc, MetricsEmpty):
        return tuple(ready.values())
    if not isinstance(exc, MetricsPodMissing) or not exc.pods:
        return ()
    found = tuple(ready.get(PodName(name)) for name in exc.pods)
    return () if any(p is None for p in found) else tuple(p for p in found if p is not None)


def _new(pod: PodState, *, policy: Policy, now: float) -> bool:
    return pod.ready_since is not None and now - pod.ready_since < grace_seconds(policy)


def grace_seconds(policy: Policy) -> float:
    """How long a Ready pod may be missing from the metrics before that is an error."""
    return max(policy.balance.settle_seconds, policy.metrics.max_staleness_seconds)
