"""The harm a run did to calls, per client group and per cause. Pure: no I/O.

The client processes report, per group (``retry``: the pinned retry policy; ``failfast``: none),
their calls and failed calls, and each failure's cause as its channel saw it
(``connbalance_sim.clients.cause_of``). The scenario takes a snapshot of those counters when the
rollout starts, when it finishes and at the end. Failures between the first two are the
``restart``'s (the pods going away and their clients redialling); those after it are counted by
the clients' own causes: ``close_during_call``, ``refused_connect``, ``backoff``, ``deadline``,
``other``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RESTART = "restart"
AFTER_CAUSES = ("close_during_call", "refused_connect", "backoff", "deadline", "other")
CAUSES = (RESTART, *AFTER_CAUSES)


@dataclass(frozen=True, slots=True)
class GroupCounts:
    clients: int = 0
    calls: int = 0
    failed: int = 0
    by_cause: Mapping[str, int] = field(default_factory=dict)
    transient_failures: int = 0

    def minus(self, earlier: GroupCounts) -> GroupCounts:
        causes = set(self.by_cause) | set(earlier.by_cause)
        return GroupCounts(
            clients=self.clients, calls=self.calls - earlier.calls,
            failed=self.failed - earlier.failed,
            by_cause={c: self.by_cause.get(c, 0) - earlier.by_cause.get(c, 0) for c in causes
                      if self.by_cause.get(c, 0) != earlier.by_cause.get(c, 0)},
            transient_failures=self.transient_failures - earlier.transient_failures)


Snapshot = Mapping[str, GroupCounts]


def snapshot(lines: Iterable[Mapping[str, Any]]) -> dict[str, GroupCounts]:
    """The sum over client processes (each one's latest report line) of each group's counts."""
    total: dict[str, GroupCounts] = {}
    for line in lines:
        for name, group in dict(line.get("groups", {})).items():
            mine = total.get(name, GroupCounts())
            causes = dict(mine.by_cause)
            for cause, count in dict(group.get("failed_by_cause", {})).items():
                causes[cause] = causes.get(cause, 0) + int(count)
            total[name] = GroupCounts(
                clients=mine.clients + int(group.get("clients", 0)),
                calls=mine.calls + int(group.get("calls_ok", 0)) + int(group.get("calls_failed",
                                                                                 0)),
                failed=mine.failed + int(group.get("calls_failed", 0)), by_cause=causes,
                transient_failures=mine.transient_failures + int(group.get("transient_failures",
                                                                           0)))
    return total


def between(earlier: Snapshot, later: Snapshot) -> dict[str, GroupCounts]:
    return {name: counts.minus(earlier.get(name, GroupCounts())) for name, counts in
            later.items()}


def summary(*, at_start: Snapshot, at_finish: Snapshot, at_end: Snapshot) -> dict[str, Any]:
    """What the bench reports: per group, the calls, the failures and their causes; and the
    causes over all groups."""
    rollout, after = between(at_start, at_finish), between(at_finish, at_end)
    groups: dict[str, Any] = {}
    for name in sorted(set(rollout) | set(after)):
        during, later = rollout.get(name, GroupCounts()), after.get(name, GroupCounts())
        causes = {RESTART: during.failed, **{c: later.by_cause.get(c, 0) for c in AFTER_CAUSES}}
        groups[name] = {
            "clients": later.clients or during.clients,
            "calls": during.calls + later.calls,
            "failed_calls": during.failed + later.failed,
            "failed_after_rollout": later.failed,
            "failed_by_cause": causes,
            "failed_connects_after_rollout": later.transient_failures,
        }
    overall = {c: sum(g["failed_by_cause"][c] for g in groups.values()) for c in CAUSES}
    return {"groups": groups, "failed_by_cause": overall}


def result(harm: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bench entry's harm fields (empty for a record made without them)."""
    if not harm:
        return {}
    return {"failed_by_cause": dict(harm["failed_by_cause"]),
            "groups": {name: dict(g) for name, g in harm["groups"].items()}}
