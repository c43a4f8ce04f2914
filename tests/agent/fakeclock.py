"""A clock for the agent's unit tests: time moves only when the test says so.

``advance(seconds)`` wakes the sleepers whose time has come one at a time, in the order of their
wake-up times (ties in the order they went to sleep), each at its own time, and lets the loop
run what that wakes before the next one; so code that sleeps again, or reads the clock when it
wakes, sees exactly the time it would have seen in real time, with no lag.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

START = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
# Enough turns of the loop for a woken sleeper's follow-ups (gather, create_task, a close) to run.
_SETTLE_TURNS = 50


class FakeClock:
    def __init__(self, *, start: datetime = START, monotonic: float = 1_000.0) -> None:
        self._start = start
        self._origin = monotonic
        self._monotonic = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._monotonic

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._monotonic - self._origin)

    def elapsed(self) -> float:
        """Seconds since the clock was made: what the tests write schedules in."""
        return self._monotonic - self._origin

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._monotonic + seconds, next(self._order), wake))
        await wake

    def sleeping(self) -> list[float]:
        """When each sleeper still waiting is due, in elapsed seconds, soonest first."""
        due = sorted((at, order) for at, order, wake in self._sleepers if not wake.done())
        return [at - self._origin for at, _ in due]

    async def advance(self, seconds: float) -> None:
        target = self._monotonic + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            at, _, wake = heapq.heappop(self._sleepers)
            if wake.done():  # cancelled
                continue
            self._monotonic = max(self._monotonic, at)
            wake.set_result(None)
            await settle()
        self._monotonic = target
        await settle()


async def settle() -> None:
    """Let everything that can run without time passing run."""
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)
