"""Pods too new to be in the metrics yet.

A pod that turned Ready a moment ago has not been scraped yet: Prometheus has no series for it
until its next scrape. That is the pool settling, not the metrics failing, so such a pod missing
from an answer is waited for (no Warning, no MetricsAvailable False) while it has been Ready for
less than settleSeconds or maxStalenessSeconds, whichever is longer; so is an answer with no
series at all when every pod asked for is that new (a whole pool replaced between two scrapes).
Missing for longer, it is the metrics' fault, and told as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from connbalance.model import PodName, PodState, Policy
from connbalance.ports import MetricsEmpty, MetricsError, MetricsPodMissing


def not_scraped_yet(
    exc: MetricsError, pods: Sequence[PodState], *, policy: Policy, now: float
) -> str:
    """Why the pool is settling, if every pod ``exc`` says is missing is too new to have been
    scraped; empty when the error is anything else (or names a pod that is not new)."""
    new = _missing_and_new(exc, pods, policy=policy, now=now)
    if not new:
        return ""
    return (
        f"{', '.join(new)} not in the metrics yet: Ready for under "
        f"{grace_seconds(policy):g}s, it may not have been scraped"
    )


def _missing_and_new(
    exc: MetricsError, pods: Sequence[PodState], *, policy: Policy, now: float
) -> tuple[str, ...]:
    ready_since = {p.name: p.ready_since for p in pods if p.ready}
    missing: tuple[str, ...]
    if isinstance(exc, MetricsEmpty):  # no series at all: every pod asked for is missing
        missing = tuple(ready_since)
    elif isinstance(exc, MetricsPodMissing):
        missing = exc.pods
    else:
        return ()
    if not missing:
        return ()
    grace = grace_seconds(policy)
    for name in missing:
        since = ready_since.get(PodName(name))
        if since is None or now - since >= grace:
            return ()
    return missing


def grace_seconds(policy: Policy) -> float:
    """How long a Ready pod may be missing from the metrics before that is an error."""
    return max(policy.balance.settle_seconds, policy.metrics.max_staleness_seconds)
