"""The operator's own scheduling, around the simulated pool.

A cluster's operator runs each balancer's controller in ``connbalance.kube.loops.Loops``: one
reconcile, then a sleep for as long as the controller asked (``requeue_after``), cut short when
a watched pod or workload changes in a way ``connbalance.kube.index.BalancerIndex`` calls news.
The simulator drives the same two: the fleet reports each change a watch would deliver (a pod
created, deleting, gone or flipping Ready; the rollout starting or ending), the index filters
them as the operator's handlers do, and the loop wakes. The bench's times to balance are then
the operator's, not those of a poll of the simulator's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from connbalance.controller import ControllerState, TickResult
from connbalance.kube.index import BalancerIndex, PodSummary
from connbalance.kube.loops import Key, Loops
from connbalance.model import PodName
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

KEY: Key = ("sim", "fleet")
Tick = Callable[[ControllerState], Awaitable[TickResult]]


class WatchedPod(Protocol):
    @property
    def name(self) -> PodName: ...

    @property
    def uid(self) -> str: ...

    @property
    def deleting(self) -> bool: ...


class WatchedPool(Protocol):
    """What the watch reads of the fleet (``LocalFleet``)."""

    @property
    def rolling(self) -> bool: ...

    def pods(self) -> Sequence[WatchedPod]: ...

    def is_ready(self, name: PodName) -> bool: ...

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]: ...
WORKLOAD = ("sim", "Deployment", "sim")


class PoolWatch:
    """Wakes the balancer's loop on the fleet's changes that the operator's watches call news."""

    def __init__(self, fleet: WatchedPool, wake: Callable[[], None]) -> None:
        self._fleet = fleet
        self._wake = wake
        self._index = BalancerIndex()
        self._uids: set[str] = set()
        self.wakes = 0

    def changed(self) -> None:
        summaries = {
            pod.uid: PodSummary(ready=not pod.deleting and self._fleet.is_ready(pod.name),
                                restarts=0, terminating=pod.deleting)
            for pod in self._fleet.pods()
        }  # fmt: skip
        news = [self._index.pod_changed(uid, None) for uid in self._uids - summaries.keys()]
        news += [self._index.pod_changed(uid, s) for uid, s in summaries.items()]
        self._uids = set(summaries)
        news.append(self._index.rollout_finished(*WORKLOAD, complete=not self._fleet.rolling))
        if any(news):
            self.wakes += 1
            self._wake()


async def run_controller(
    tick: Tick,
    *,
    on_result: Callable[[TickResult, ControllerState], None],
    fleet: WatchedPool,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Run a controller's ``tick`` in the operator's loop, woken by ``fleet``'s changes, until
    cancelled. ``on_result`` hears each reconcile's result and the state before it."""
    state = ControllerState()

    async def reconcile(key: Key) -> float:
        nonlocal state
        result = await tick(state)
        on_result(result, state)
        state = result.state
        return result.requeue_after

    loops = Loops(reconcile=reconcile, clock=clock)
    watch = PoolWatch(fleet, lambda: loops.wake(KEY))
    unwatch = fleet.watch(watch.changed)
    watch.changed()  # what the first list of a watch delivers
    loops.ensure(KEY)
    try:
        await asyncio.Event().wait()
    finally:
        unwatch()
        await loops.stop_all()
