"""The simulator schedules the controller as the operator does: a reconcile, then a sleep for
``requeue_after``, cut short only by a change of the pool that the operator's watches call news.
Driven by a fake clock; the pool is a few lines of state, as the fleet reports it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from connbalance.controller import ControllerState, TickResult
from connbalance.model import Phase, PodName
from connbalance_sim.operatorloop import PoolWatch, run_controller
from tests.agent.fakeclock import FakeClock, settle


@dataclass
class Pod:
    name: PodName
    uid: str
    deleting: bool = False


@dataclass
class Pool:
    """The fleet as its watch sees it: pods, their readiness, whether a rollout runs."""

    members: list[Pod] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    rolling: bool = False
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def pods(self) -> list[Pod]:
        return list(self.members)

    def is_ready(self, name: PodName) -> bool:
        return name in self.ready

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()


def three_ready() -> Pool:
    pool = Pool(members=[Pod(PodName(f"p-{i}"), f"u{i}") for i in range(3)])
    pool.ready = {p.name for p in pool.members}
    return pool


def test_the_watch_wakes_on_news_only():
    pool = three_ready()
    woken: list[int] = []
    watch = PoolWatch(pool, lambda: woken.append(1))
    watch.changed()  # the first list: all news
    assert len(woken) == 1
    watch.changed()  # nothing changed: no wake
    assert len(woken) == 1
    pool.rolling = True
    watch.changed()  # a rollout starting is not news by itself
    assert len(woken) == 1
    pool.members[0].deleting = True
    watch.changed()  # a pod deleting is
    pool.members[0] = Pod(PodName("p-0"), "u9")  # replaced under its name, not Ready yet
    pool.ready.discard(PodName("p-0"))
    watch.changed()
    pool.ready.add(PodName("p-0"))
    watch.changed()  # Ready again
    assert len(woken) == 4
    pool.rolling = False
    watch.changed()  # the rollout has just finished
    assert len(woken) == 5


def result(requeue_after: float) -> TickResult:
    return TickResult(state=ControllerState(phase=Phase.BALANCED), conditions=(),
                      requeue_after=requeue_after)  # fmt: skip


def test_the_loop_sleeps_for_requeue_after_and_a_pool_change_wakes_it_at_once():
    async def scenario() -> list[float]:
        clock, pool, ticks = FakeClock(), three_ready(), []

        async def tick(state: ControllerState) -> TickResult:
            ticks.append(clock.elapsed())
            return result(30.0)

        runner = asyncio.create_task(
            run_controller(tick, on_result=lambda r, s: None, fleet=pool, clock=clock)
        )
        await clock.advance(10)  # first run at 0; asleep for 30
        pool.members[1].deleting = True
        pool.changed()  # woken at 10
        await settle()
        await clock.advance(45)  # next at 10 + 30 = 40, then 70 is not reached
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert pool.listeners == []  # the watch is gone with the loop
        return ticks

    assert asyncio.run(scenario()) == [0, 10, 40]
