"""What has moved in each namespace since a reader last listed it, so that a balancer's pool is
listed again only when something in it changed, not on every tick.

The operator's pod and workload watches bump a namespace's version on every event of a pod or
workload some balancer selects, and the operator bumps it after each of its own pod writes (its
watch event may come after the next tick). A reader keeps what it read beside the version it
read it at, taken *before* the read, so a change made during the read is not missed. What was
read is reused while the version stands and for at most ``resync_seconds``: a watch that
missed an event, or a pod that left the selection, costs one resync period at most, as an
informer's resync does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

RESYNC_SECONDS: Final = 300.0


@dataclass(frozen=True, slots=True)
class _Kept:
    version: int
    at: float  # the clock's reading when it was read
    value: object


class PodChanges:
    """Versions per namespace, and what each reader last read there. Safe across threads: the
    watches bump on the event loop while readers run in worker threads."""

    def __init__(
        self,
        *,
        resync_seconds: float = RESYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resync = resync_seconds
        self._clock = clock
        self._versions: dict[str, int] = {}
        self._kept: dict[Hashable, _Kept] = {}
        self._lock = threading.Lock()

    def bump(self, namespace: str) -> None:
        with self._lock:
            self._versions[namespace] = self._versions.get(namespace, 0) + 1

    def version(self, namespace: str) -> int:
        with self._lock:
            return self._versions.get(namespace, 0)

    def reusable(self, key: Hashable, namespace: str) -> object | None:
        """What ``key`` last kept in ``namespace``, if nothing there moved since and it is
        younger than the resync period; else None (read again)."""
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.version != self._versions.get(namespace, 0):
                return None
            if self._clock() - kept.at >= self._resync:
                return None
            return kept.value

    def keep(self, key: Hashable, *, version: int, value: object) -> None:
        """Remember ``value``, read at ``version`` (taken before the read). Entries older than
        the resync period are dropped, so balancers that went away leave nothing behind."""
        now = self._clock()
        with self._lock:
            self._kept = {k: v for k, v in self._kept.items() if now - v.at < self._resync}
            self._kept[key] = _Kept(version=version, at=now, value=value)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._kept.pop(key, None)
