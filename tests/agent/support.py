"""Helpers for the agent tests: a bounded event loop per scenario, on the agent's loopback range."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
HOST = "127.0.4.1"


def run(coro: Coroutine[Any, Any, T], *, timeout: float = 120.0, loop: str = "asyncio") -> T:
    """Run one scenario to completion, bounded in time, on the standard loop or uvloop."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    if loop == "uvloop":
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


def deadline_in(seconds: float) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
