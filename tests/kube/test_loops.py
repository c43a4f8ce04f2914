"""The per-balancer loops: sleep as long as the reconcile asks, wake early when told, back off
on errors, stop cleanly. Driven by a fake clock."""

from __future__ import annotations

import asyncio

from connbalance.kube.loops import FIRST_BACKOFF_SECONDS, RESYNC_SECONDS, Loops
from tests.agent.fakeclock import FakeClock, settle

KEY = ("ns", "auth")


class Recorder:
    def __init__(self, clock: FakeClock, answers: list[float | Exception | None]) -> None:
        self.clock = clock
        self.answers = answers
        self.runs: list[float] = []

    async def __call__(self, key):
        self.runs.append(self.clock.elapsed())
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_loop_runs_again_when_its_reconcile_asks():
    async def scenario():
        clock = FakeClock()
        reconcile = Recorder(clock, [7.0, 3.0])
        loops = Loops(reconcile=reconcile, clock=clock)
        loops.ensure(KEY)
        await clock.advance(12)
        await loops.stop_all()
        return reconcile.runs

    assert run(scenario()) == [0, 7, 10]


def test_a_wake_cuts_the_sleep_short_and_many_wakes_make_one_run():
    async def scenario():
        clock = FakeClock()
        reconcile = Recorder(clock, [100.0, 100.0])
        loops = Loops(reconcile=reconcile, clock=clock)
        loops.ensure(KEY)
        await clock.advance(5)
        for _ in range(3):
            loops.wake(KEY)
        await settle()
        await clock.advance(5)
        await loops.stop_all()
        return reconcile.runs

    assert run(scenario()) == [0, 5]


def test_nothing_to_wait_for_still_looks_again_at_the_resync():
    async def scenario():
        clock = FakeClock()
        reconcile = Recorder(clock, [None])
        loops = Loops(reconcile=reconcile, clock=clock)
        loops.ensure(KEY)
        await clock.advance(RESYNC_SECONDS - 1)
        before = list(reconcile.runs)
        await clock.advance(1)
        await loops.stop_all()
        return before, reconcile.runs

    before, after = run(scenario())
    assert before == [0]
    assert after == [0, RESYNC_SECONDS]


def test_a_failing_reconcile_backs_off_doubling_and_a_success_resets_it():
    async def scenario():
        clock = FakeClock()
        boom = RuntimeError("apiserver away")
        reconcile = Recorder(clock, [boom, boom, boom, 50.0, boom])
        errors: list[str] = []
        loops = Loops(reconcile=reconcile, clock=clock, on_error=lambda k, e: errors.append(str(e)))
        loops.ensure(KEY)
        await clock.advance(60)
        await loops.stop_all()
        return reconcile.runs, errors

    runs, errors = run(scenario())
    first = FIRST_BACKOFF_SECONDS
    # After the success the backoff starts again from the first step.
    assert runs == [0, first, first * 3, first * 7, first * 7 + 50, first * 8 + 50]
    assert len(errors) == 4


def test_a_stopped_loop_never_runs_again():
    async def scenario():
        clock = FakeClock()
        reconcile = Recorder(clock, [1.0, 1.0, 1.0])
        loops = Loops(reconcile=reconcile, clock=clock)
        loops.ensure(KEY)
        await clock.advance(1.5)
        await loops.stop(KEY)
        loops.wake(KEY)
        await clock.advance(10)
        return reconcile.runs, loops.active()

    runs, keys = run(scenario())
    assert runs == [0, 1]
    assert keys == []
