"""The ConnectionBalancers as the operator last knew them, so that a tick reads its balancer
without a GET.

The watch already delivers every change of a balancer, in order: its metadata and spec are
taken from the newest event, as a controller-runtime controller reads its informer's cache.
Its status is another matter: only the leader writes it, and the watch's copy trails each
write by an event, so a tick reading status from the watch could judge against what it wrote
two ticks ago (and post an Event twice). Status is therefore taken from what this operator
last wrote (the object its patch returned) or, first in each term as leader and after a write
failed, from one GET. Nothing here is durable: losing it costs one GET per balancer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]


class Balancers:
    """Bodies by key; safe on one event loop (the handlers and the loops share it)."""

    def __init__(self) -> None:
        self._watched: dict[Key, dict[str, Any]] = {}
        self._status: dict[Key, dict[str, Any]] = {}

    def seen(self, key: Key, body: Mapping[str, Any]) -> None:
        """The watch delivered ``body`` (any event but a deletion)."""
        self._watched[key] = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}

    def fetched(self, key: Key, body: Mapping[str, Any]) -> None:
        """A GET returned ``body``: its status is the one to start from. Its metadata and spec
        fill in only what the watch has not delivered yet (the watch's next event is newer)."""
        self._status[key] = copy.deepcopy(dict(body.get("status") or {}))
        if key not in self._watched:
            self.seen(key, body)

    def wrote(self, key: Key, body: Mapping[str, Any]) -> None:
        """This operator's status patch returned ``body``."""
        self._status[key] = copy.deepcopy(dict(body.get("status") or {}))

    def body(self, key: Key) -> dict[str, Any] | None:
        """The balancer with the status last written, or None when a GET must say (never seen,
        or its status unknown this term)."""
        watched, status = self._watched.get(key), self._status.get(key)
        if watched is None or status is None:
            return None
        return {**copy.deepcopy(watched), "status": copy.deepcopy(status)}

    def forget_status(self, key: Key | None = None) -> None:
        """Read status again with a GET: for ``key`` after a write that failed, or for every
        balancer when leadership is lost (another leader may write it meanwhile)."""
        if key is None:
            self._status.clear()
        else:
            self._status.pop(key, None)

    def drop(self, key: Key) -> None:
        """The balancer was deleted."""
        self._watched.pop(key, None)
        self._status.pop(key, None)
