"""What a scenario recorded, and the figures the bench reports from it. Pure: no I/O.

Times are seconds since the scenario started. Definitions (as the bench documents them):

- ``needed``: the sum of load above the mean at the moment the rollout finished, taken from the
  first sample after it in which every client is connected again (or the last within 5 s);
- ``time_to_balance_s``: from the finished rollout until max/mean stays at or under 1.10 for
  the rest of the run, or None;
- ``cycled``: connections closed on purpose (by an agent or a client, never by a restart) from
  the start of the rollout to the end of the run;
- ``churn_when_balanced``: those of them closed while the latest sample was already balanced,
  outside the rollout itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BALANCED = 1.10
SETTLE_LOOKAHEAD = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    loads: Mapping[str, float]  # ready pods only

    @property
    def total(self) -> float:
        return sum(self.loads.values())

    @property
    def mean(self) -> float:
        return self.total / len(self.loads) if self.loads else 0.0

    @property
    def skew(self) -> float | None:
        mean = self.mean
        return max(self.loads.values()) / mean if mean > 0 else None

    @property
    def excess(self) -> float:
        mean = self.mean
        return sum(max(0.0, load - mean) for load in self.loads.values())


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str  # restart, ready, drain, close, phase, note
    pod: str
    text: str
    count: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """Everything one scenario run observed."""

    strategy: str
    clients: int
    samples: tuple[Sample, ...]
    events: tuple[Event, ...]
    cycled_at: tuple[float, ...]  # when each deliberate close happened
    rollout_started: float
    rollout_finished: float
    ended: float
    failed_calls: int
    calls: int
    refused: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def settled_sample(record: Record) -> Sample | None:
    after = [s for s in record.samples if s.t >= record.rollout_finished]
    if not after:
        return None
    horizon = record.rollout_finished + SETTLE_LOOKAHEAD
    for sample in after:
        if sample.total >= record.clients and len(sample.loads) > 0:
            return sample
        if sample.t > horizon:
            return sample
    return after[-1]


def needed(record: Record) -> int:
    sample = settled_sample(record)
    return round(sample.excess) if sample is not None else 0


def time_to_balance(record: Record, *, bound: float = BALANCED) -> float | None:
    after = [s for s in record.samples if s.t >= record.rollout_finished]
    if not after:
        return None
    balanced_from: float | None = record.rollout_finished
    for sample in after:
        skew = sample.skew
        if skew is None or skew > bound + 1e-9:
            balanced_from = None
        elif balanced_from is None:
            balanced_from = sample.t
    if balanced_from is None:
        return None
    return max(0.0, balanced_from - record.rollout_finished)


def skew_at(samples: Sequence[Sample], t: float) -> float | None:
    """The skew of the latest sample at or before ``t``."""
    latest: Sample | None = None
    for sample in samples:
        if sample.t > t:
            break
        latest = sample
    return latest.skew if latest is not None else None


def churn_when_balanced(record: Record, *, bound: float = BALANCED) -> int:
    churn = 0
    for t in record.cycled_at:
        if record.rollout_started <= t <= record.rollout_finished:
            continue
        skew = skew_at(record.samples, t)
        if skew is not None and skew <= bound + 1e-9:
            churn += 1
    return churn


def cycled(record: Record) -> int:
    return sum(1 for t in record.cycled_at if record.rollout_started <= t <= record.ended)


def final_skew(record: Record) -> float:
    for sample in reversed(record.samples):
        if sample.skew is not None:
            return sample.skew
    return float("nan")


def skew_before(record: Record) -> float | None:
    """The skew the rollout left: at the settled sample after it."""
    sample = settled_sample(record)
    return sample.skew if sample is not None else None


def result(record: Record) -> dict[str, Any]:
    """One entry of the bench's ``results``."""
    need, moved = needed(record), cycled(record)
    ttb = time_to_balance(record)
    return {
        "strategy": record.strategy,
        "time_to_balance_s": None if ttb is None else round(ttb, 2),
        "cycled": moved,
        "needed": need,
        "cycled_ratio": round(moved / need, 2) if need > 0 else None,
        "failed_calls": record.failed_calls,
        "final_skew": round(final_skew(record), 3),
        "churn_when_balanced": churn_when_balanced(record),
    }
