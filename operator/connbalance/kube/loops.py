"""One loop per ConnectionBalancer: reconcile, then sleep until asked to or until woken.

The work queue of a controller-runtime controller, for a handful of keys: a loop holds a key,
never an object, and re-reads everything when it runs. ``wake`` (a watched pod or workload
changed) cuts the sleep short; several wakes during one reconcile make one more run, not many.
A reconcile that raises is retried with exponential backoff, the error counted and logged once
per change of message rather than at every retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[Key], Awaitable[float | None]]

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
# With nothing to wait for, a loop still looks again this often: a missed watch event costs at
# most this long, never forever.
RESYNC_SECONDS = 300.0


@dataclass(slots=True)
class _Loop:
    task: asyncio.Task[None] | None = None
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: float = 0.0
    last_error: str | None = None


class Loops:
    """The running loops by key. ``reconcile(key)`` returns seconds until it wants to run again
    (None: only when woken, or at the resync)."""

    def __init__(
        self,
        *,
        reconcile: Reconcile,
        clock: Clock = SYSTEM_CLOCK,
        on_error: Callable[[Key, Exception], None] = lambda key, exc: None,
    ) -> None:
        self._reconcile = reconcile
        self._clock = clock
        self._on_error = on_error
        self._loops: dict[Key, _Loop] = {}

    def active(self) -> list[Key]:
        return sorted(self._loops)

    def running(self, key: Key) -> bool:
        return key in self._loops

    def ensure(self, key: Key) -> None:
        """Start the key's loop if it is not running; wake it if it is."""
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = _Loop()
            name = f"balancer {key[0]}/{key[1]}"
            loop.task = asyncio.create_task(self._run(key, loop), name=name)
        else:
            loop.woken.set()

    def wake(self, key: Key) -> None:
        loop = self._loops.get(key)
        if loop is not None:
            loop.woken.set()

    async def stop(self, key: Key) -> None:
        loop = self._loops.pop(key, None)
        if loop is not None and loop.task is not None:
            loop.task.cancel()
            await asyncio.gather(loop.task, return_exceptions=True)

    async def stop_all(self) -> None:
        for key in list(self._loops):
            await self.stop(key)

    async def _run(self, key: Key, loop: _Loop) -> None:
        while True:
            loop.woken.clear()
            delay = await self._once(key, loop)
            await self._sleep(loop, delay)

    async def _once(self, key: Key, loop: _Loop) -> float:
        try:
            wanted = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a reconcile that fails is retried, never fatal to the loop
            return self._failed(key, loop, exc)
        loop.backoff, loop.last_error = 0.0, None
        return RESYNC_SECONDS if wanted is None else max(0.0, min(wanted, RESYNC_SECONDS))

    def _failed(self, key: Key, loop: _Loop, exc: Exception) -> float:
        loop.backoff = min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, loop.backoff * 2))
        message = f"{type(exc).__name__}: {exc}"
        if message != loop.last_error:
            log.warning("balancer %s/%s: reconcile failed, retrying: %s", *key, message)
            loop.last_error = message
        self._on_error(key, exc)
        return loop.backoff

    async def _sleep(self, loop: _Loop, seconds: float) -> None:
        if loop.woken.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(loop.woken.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
