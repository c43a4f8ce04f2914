"""What a scenario recorded, and the figures the bench reports from it. Pure: no I/O.

Times are seconds since the scenario started. Definitions (as the bench documents them):

- ``needed``: the sum of load above the mean at the moment the rollout finished, taken from the
  first sample after it in which every client is connected again (or the last within 5 s);
- ``time_to_balance_s``: from the finished rollout until max/mean stays at or under 1.10 for
  the rest of the run, or None;
- ``cycled``: connections closed on purpose (by an agent or a client, never by a restart) from
  the start of the rollout to the end of the run;
- ``churn_when_balanced``: those of them closed, outside the rollout itself, on a decision
  taken while the pool was balanced as the controller judges it (each close belongs to the
  latest drain or close ordered before it; a step decided on a skewed pool that has become
  balanced before its window ends is not churn). The controller has hysteresis: a pool it is
  not working on is balanced while max/mean is at or under 1 + ``balance.tolerance`` (1.10);
  once over it, it works until max/mean is at or under 1 + ``balance.targetTolerance`` (1.05),
  and only then is the pool balanced again. The samples are read the same way, whatever the
  strategy, with the product's default tolerances; ``churn_within_tolerance`` is the plainer
  count of closes made while the latest sample was at or under 1.10, whatever ordered them;
- ``cycled_again``: cycled connections that had been opened after the rollout finished, i.e.
  clients moved a second time (or more): what a plan that moves each connection once avoids;
- ``failed_per_1000``: failed calls per 1,000 calls made from the rollout to the end.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connbalance.model import Policy

# The product's own defaults: what "balanced" means to the controller out of the box.
_DEFAULTS = Policy.from_spec({"selector": {"matchLabels": {"app": "bench"}}}).balance
BALANCED = 1 + _DEFAULTS.tolerance  # 1.10: acted on above it
TARGET = 1 + _DEFAULTS.target_tolerance  # 1.05: once acting, balanced again at or under it
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
    # When each cycled connection had been opened, in the order of ``cycled_at`` (or empty).
    cycled_opened_at: tuple[float, ...] = ()


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


def balanced_at(samples: Sequence[Sample], *, act_above: float = BALANCED,
                until_within: float = TARGET) -> list[tuple[float, bool]]:
    """Each sample's time and whether the pool was balanced then, as the controller judges:
    balanced until max/mean goes over ``act_above``, then not until it is back at or under
    ``until_within`` (hysteresis)."""
    balanced, marks = True, []
    for sample in samples:
        skew = sample.skew
        if skew is not None:
            if balanced and skew > act_above + 1e-9:
                balanced = False
            elif not balanced and skew <= until_within + 1e-9:
                balanced = True
        marks.append((sample.t, balanced))
    return marks


def _outside_rollout(record: Record) -> list[float]:
    return [t for t in record.cycled_at
            if not record.rollout_started <= t <= record.rollout_finished]


DECISIONS = frozenset({"drain", "close"})  # event kinds that order closes: a step, a close


def churn_when_balanced(record: Record) -> int:
    """Closes made on a decision taken while the pool was balanced, hysteresis included (see the
    module). A close belongs to the latest decision at or before it (a drain the controller
    delivered, or the closes another strategy ordered), or to itself where no decision was
    logged (clients that drop their own connections): the closes of a step decided on a skewed
    pool are that step's work even when the pool is balanced before its window ends."""
    marks = balanced_at(record.samples)
    decided = sorted(e.t for e in record.events if e.kind in DECISIONS)
    churn = 0
    for t in _outside_rollout(record):
        at = bisect.bisect_right(decided, t)
        churn += _balanced_then(marks, decided[at - 1] if at else t)
    return churn


def _balanced_then(marks: Sequence[tuple[float, bool]], t: float) -> bool:
    """Whether the latest sample at or before ``t`` found the pool balanced (none: not)."""
    latest = False
    for at, balanced in marks:
        if at > t:
            break
        latest = balanced
    return latest


def churn_within_tolerance(record: Record, *, bound: float = BALANCED) -> int:
    """Closes made while the latest sample was at or under ``bound``, hysteresis aside."""
    churn = 0
    for t in _outside_rollout(record):
        skew = skew_at(record.samples, t)
        if skew is not None and skew <= bound + 1e-9:
            churn += 1
    return churn


def cycled_again(record: Record) -> int:
    """Cycled connections opened after the rollout finished: clients moved more than once."""
    return sum(1 for t, opened in zip(record.cycled_at, record.cycled_opened_at, strict=False)
               if record.rollout_started <= t <= record.ended
               and opened > record.rollout_finished)


def failed_per_1000(record: Record) -> float | None:
    return 1000 * record.failed_calls / record.calls if record.calls > 0 else None


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
        "churn_within_tolerance": churn_within_tolerance(record),
        "cycled_again": cycled_again(record),
        "calls": record.calls,
        "failed_per_1000": _rounded(failed_per_1000(record), 2),
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
