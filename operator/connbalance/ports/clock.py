"""The clock port: monotonic seconds, UTC wall time and sleeping, and the system clock behind it.

Code that times anything (the agent's schedules, quiet periods, deadlines and steering windows)
takes a ``Clock`` and reads nothing else, so tests can drive it with a fake one and assert exact
times. ``SystemClock`` is the only place that reads the real time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences between readings mean anything."""
        ...

    def now(self) -> datetime:
        """The wall time, time-zone aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock (at once for zero or less)."""
        ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The real time: ``time.monotonic``, ``datetime.now(UTC)`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Clock = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]
