"""Which connections to cycle, how many, and when: pure arithmetic, no I/O, no clock reads."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One client connection as the agent sees it.

    Times are seconds on the agent clock's ``monotonic()``. ``idle_seconds`` is how long both
    directions have been quiet; ``queued`` is data still waiting in a buffer (kernel queues in
    reset mode, the proxy's write buffers in proxy mode): a connection with queued data is never
    idle.
    ``client_spoke_last`` says the last bytes went from the client to the server: a request is
    probably waiting for its answer, however long the silence, so the connection is not idle.
    """

    def is_quiet(self, quiet_seconds: float) -> bool:
        return (
            self.idle_seconds >= quiet_seconds and self.queued == 0 and not self.client_spoke_last
        )

    id: str
    peer: tuple[str, int]
    opened_at: float | None
    last_activity: float
    idle_seconds: float
    bytes_in: int
    bytes_out: int
    queued: int = 0
    client_spoke_last: bool = False


def ceiling(*, active: int, max_fraction: float) -> int:
    """The most one request may cycle: ``max_fraction`` of the active connections, rounded down.

    Rounded down so the ceiling is never exceeded, even by one; the small epsilon keeps
    ``0.1 * 100`` at 10 in floating point.
    """
    if active <= 0 or max_fraction <= 0:
        return 0
    return min(active, math.floor(active * max_fraction + 1e-9))


def freshly_quiet_first(
    connections: Iterable[ConnectionInfo], *, quiet_seconds: float
) -> list[ConnectionInfo]:
    """The order to close in. Connections already quiet for ``quiet_seconds`` come first, the
    one whose last exchange ended most recently first; then those not quiet yet, the nearest to
    quiet first; last those with queued data or a request pending. Ties go to the oldest.

    A client that has just had its answer is the furthest from its next call, so it is back on
    another pod before it makes one. The longest idle is the nearest to its next call when calls
    come at a steady pace (heartbeats, pings, a Teleport agent's inventory stream): closed first,
    it makes that call while it redials, and a client without a retry policy fails it. Measured
    in ``docs/bench.md`` ("Which connection to close"): 15 to 29 such failures a run, then 1 to 4.
    """

    def rank(c: ConnectionInfo) -> CloseRank:
        return close_rank(
            idle_seconds=c.idle_seconds,
            busy=c.queued > 0 or c.client_spoke_last,
            opened=c.opened_at if c.opened_at is not None else math.inf,
            conn_id=c.id,
            quiet_seconds=quiet_seconds,
        )

    return sorted(connections, key=rank)


CloseRank = tuple[bool, bool, float, float, str]


def close_rank(
    *, idle_seconds: float, busy: bool, opened: float, conn_id: str, quiet_seconds: float
) -> CloseRank:
    """Where a connection falls in ``freshly_quiet_first``'s order: smaller closes sooner.
    ``opened`` is anything that orders connections oldest first."""
    quiet = idle_seconds >= quiet_seconds
    freshness = idle_seconds if quiet else -idle_seconds
    return (busy, not quiet, freshness, opened, conn_id)


def spread(*, count: int, window_seconds: float, rng: random.Random, start: float) -> list[float]:
    """When to make each of ``count`` closes, sorted: times on the clock that gave ``start``.

    One close falls at a random point in each of ``count`` equal slices of the window that opens
    at ``start`` (stratified jitter): closes never bunch up the way independent uniform draws can,
    and no two agents that got the same request close in lockstep. ``start`` is the caller's
    clock reading, so the schedule is arithmetic alone.
    """
    if count <= 0:
        return []
    if window_seconds <= 0:
        return [start] * count
    step = window_seconds / count
    return [start + step * (i + rng.random()) for i in range(count)]


def pick(
    candidates: Sequence[ConnectionInfo],
    *,
    eligible: Set[str],
    claimed: set[str],
    quiet_seconds: float,
) -> ConnectionInfo | None:
    """The first connection in ``freshly_quiet_first`` order that the request may cycle and
    nobody is closing already."""
    free = (c for c in candidates if c.id in eligible and c.id not in claimed)
    for conn in freshly_quiet_first(free, quiet_seconds=quiet_seconds):
        return conn
    return None
