"""The engine's timing on a fake clock: exact schedules, quiet closes, deadlines, the ceiling.

A mode made of plain data stands in for proxy or reset mode: each connection says when data last
passed (``activity``, elapsed seconds on the fake clock) and whether the client is waiting for an
answer. Its quiet test is the proxy's; every timing decision under test is the engine's.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from connbalance.agent import CloseOutcome, DrainEngine, RequestState, RequestStatus
from connbalance.agent.selection import ConnectionInfo
from connbalance.model import DrainRequest
from tests.agent.fakeclock import START, FakeClock
from tests.agent.support import run

POLL_SECONDS = 0.005


@dataclass
class Conn:
    id: str
    activity: tuple[float, ...] = (-60.0,)  # when data passed, elapsed seconds
    chatty: bool = False  # data passes all the time
    answered_at: float = -math.inf  # until then the client waits for an answer
    leaves_at: float = math.inf  # the client closes it by itself then

    def last_activity(self, now: float) -> float:
        if self.chatty:
            return now
        return max((a for a in self.activity if a <= now), default=-math.inf)


@dataclass(frozen=True)
class Closed:
    at: float
    id: str
    graceful: bool


class ListEngine(DrainEngine):
    mode = "list"

    def __init__(
        self, conns: Iterable[Conn], *, clock: FakeClock, max_fraction: float, seed: int
    ) -> None:
        self.fake_clock = clock
        self.open = {c.id: c for c in conns}
        self.closed: list[Closed] = []
        super().__init__(clock=clock, max_fraction=max_fraction, rng=random.Random(seed))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._cancel_requests()

    def connections(self) -> list[ConnectionInfo]:
        now = self.fake_clock.elapsed()
        for conn in [c for c in self.open.values() if now >= c.leaves_at]:
            del self.open[conn.id]
        return [
            ConnectionInfo(
                id=c.id,
                peer=("127.0.4.9", 1),
                opened_at=0.0,
                last_activity=c.last_activity(now),
                idle_seconds=now - c.last_activity(now),
                bytes_in=0,
                bytes_out=0,
                client_spoke_last=now < c.answered_at,
            )
            for c in self.open.values()
        ]

    def _quiet_wait(self, conn_id: str, *, quiet_seconds: float) -> float | None:
        self.connections()
        conn = self.open.get(conn_id)
        if conn is None:
            return None
        now = self.fake_clock.elapsed()
        quiet_for = now - conn.last_activity(now)
        if quiet_for >= quiet_seconds and now >= conn.answered_at:
            return 0.0
        return max(quiet_seconds - quiet_for, POLL_SECONDS)

    def _shut(self, conn_id: str, *, graceful: bool) -> bool:
        if self.open.pop(conn_id, None) is None:
            return False
        self.closed.append(Closed(self.fake_clock.elapsed(), conn_id, graceful))
        return True


def engine(conns: Iterable[Conn], *, seed: int = 3, max_fraction: float = 1.0) -> ListEngine:
    return ListEngine(conns, clock=FakeClock(), max_fraction=max_fraction, seed=seed)


def quiet_conns(n: int) -> list[Conn]:
    # c5 went quiet last, c0 first: freshly quiet first closes c5, then c4, and so on.
    return [Conn(f"c{i}", activity=(-60.0 + i,)) for i in range(n)]


def request(
    request_id: str,
    count: int,
    *,
    window: float,
    quiet_millis: int = 200,
    deadline_in: float = 60.0,
    steer: bool = False,
) -> DrainRequest:
    return DrainRequest.from_wire(
        {
            "id": request_id,
            "count": count,
            "windowSeconds": window,
            "quietMillis": quiet_millis,
            "deadline": (START + timedelta(seconds=deadline_in)).isoformat(),
            "steer": steer,
        },
        now=START,
    )


async def run_out(agent: ListEngine, request_id: str, *, seconds: float) -> RequestStatus:
    await agent.fake_clock.advance(seconds)
    status = agent.request_status(request_id)
    assert status is not None
    assert status.state is RequestState.DONE
    return status


def test_each_close_happens_at_its_seeded_time_in_the_window_freshly_quiet_first():
    # Seed 3 draws 0.2380, 0.5442, 0.3700, 0.6039: one close in each half second of the 2 s.
    async def scenario() -> None:
        agent = engine(quiet_conns(6), seed=3)
        await agent.submit(request("r", 4, window=2.0))
        final = await run_out(agent, "r", seconds=3.0)
        assert [c.at for c in agent.closed] == pytest.approx(
            [0.118982, 0.772115, 1.184978, 1.801960], abs=1e-6
        )
        assert [c.id for c in agent.closed] == ["c5", "c4", "c3", "c2"]
        assert (final.cycled, final.forced, final.reason) == (4, 0, "")

    run(scenario())


def test_nothing_is_closed_before_its_time_comes():
    async def scenario() -> None:
        agent = engine(quiet_conns(6), seed=3)
        await agent.submit(request("r", 4, window=2.0))
        await agent.fake_clock.advance(0.118)
        assert agent.closed == []
        assert agent.fake_clock.sleeping() == pytest.approx(
            [0.118982, 0.772115, 1.184978, 1.801960], abs=1e-6
        )
        await agent.fake_clock.advance(0.001)
        assert len(agent.closed) == 1
        status = agent.request_status("r")
        assert status is not None
        assert (status.state, status.cycled) == (RequestState.RUNNING, 1)

    run(scenario())


def test_a_zero_window_closes_every_chosen_connection_at_once():
    async def scenario() -> None:
        agent = engine(quiet_conns(3))
        await agent.submit(request("r", 3, window=0.0))
        await run_out(agent, "r", seconds=0.0)
        assert [c.at for c in agent.closed] == [0.0, 0.0, 0.0]

    run(scenario())


def test_a_connection_that_speaks_while_its_close_waits_closes_quiet_millis_after_it_spoke():
    async def scenario() -> None:
        agent = engine([Conn("talker", activity=(0.0, 0.25))])
        await agent.submit(request("r", 1, window=0.0, quiet_millis=500))
        final = await run_out(agent, "r", seconds=5.0)
        assert agent.closed == [Closed(0.75, "talker", graceful=True)]
        assert (final.cycled, final.forced) == (1, 0)

    run(scenario())


def test_a_call_still_being_answered_holds_the_close_until_the_answer_and_quiet_millis_more():
    async def scenario() -> None:
        agent = engine([Conn("waiting", activity=(0.0, 1.5), answered_at=1.5)])
        await agent.submit(request("r", 1, window=0.0, quiet_millis=500))
        await run_out(agent, "r", seconds=5.0)
        assert agent.closed == [Closed(pytest.approx(2.0), "waiting", graceful=True)]

    run(scenario())


def test_a_connection_that_never_goes_quiet_is_forced_closed_exactly_at_the_deadline():
    async def scenario() -> None:
        agent = engine([Conn("chatty", chatty=True)])
        await agent.submit(request("r", 1, window=0.0, quiet_millis=500, deadline_in=5.0))
        await agent.fake_clock.advance(4.999)
        assert agent.closed == []
        final = await run_out(agent, "r", seconds=0.001)
        assert agent.closed == [Closed(pytest.approx(5.0), "chatty", graceful=False)]
        assert (final.cycled, final.forced) == (1, 1)
        body = agent.metrics.render().decode()
        assert 'connbalance_agent_cycled_connections_total{how="forced",mode="list"} 1.0' in body

    run(scenario())


def test_quiet_connections_close_gracefully_and_busy_ones_are_forced_at_the_deadline():
    async def scenario() -> None:
        conns = [Conn("quiet"), Conn("busy-1", chatty=True), Conn("busy-2", chatty=True)]
        agent = engine(conns, seed=5)
        await agent.submit(request("r", 3, window=3.0, quiet_millis=200, deadline_in=4.0))
        final = await run_out(agent, "r", seconds=10.0)
        # Seed 5 puts the slots at 0.623, 1.742 and 2.795 s; the quiet one goes first.
        assert agent.closed == [
            Closed(pytest.approx(0.622902), "quiet", graceful=True),
            Closed(pytest.approx(4.0), "busy-1", graceful=False),
            Closed(pytest.approx(4.0), "busy-2", graceful=False),
        ]
        assert (final.cycled, final.forced) == (3, 2)

    run(scenario())


def test_closes_due_after_the_deadline_happen_at_the_deadline():
    async def scenario() -> None:
        agent = engine(quiet_conns(2), seed=3)
        # A 10 s window over 2 closes puts the second at 7.72 s, past the 3 s deadline.
        await agent.submit(request("r", 2, window=10.0, deadline_in=3.0))
        await run_out(agent, "r", seconds=10.0)
        assert [(c.at, c.graceful) for c in agent.closed] == [
            (pytest.approx(1.189823), True),
            (pytest.approx(3.0), True),
        ]

    run(scenario())


def test_a_request_whose_deadline_has_passed_is_rejected_and_closes_nothing():
    async def scenario() -> None:
        agent = engine(quiet_conns(4))
        await agent.fake_clock.advance(30.0)
        status = await agent.submit(request("late", 1, window=0.0, deadline_in=30.0))
        assert (status.state, status.reason) == (RequestState.REJECTED, "deadline has passed")
        await agent.fake_clock.advance(60.0)
        assert agent.closed == []
        assert agent.fake_clock.sleeping() == []

    run(scenario())


def test_an_agent_that_cannot_cycle_rejects_each_request_saying_why_and_reports_it():
    async def scenario() -> None:
        agent = engine(quiet_conns(4))
        assert agent.status().to_wire()["degraded"] == ""
        agent.cannot_cycle("reset mode needs CAP_NET_ADMIN")
        status = await agent.submit(request("d1", 1, window=0.0, steer=True))
        assert status.state is RequestState.REJECTED
        reason = "this agent cannot cycle connections: reset mode needs CAP_NET_ADMIN"
        assert status.reason == reason
        await agent.fake_clock.advance(60.0)
        assert agent.closed == []
        wire = agent.status().to_wire()
        assert wire["degraded"] == "reset mode needs CAP_NET_ADMIN"
        assert wire["active"] == 4
        rendered = agent.metrics.render().decode()
        assert "connbalance_agent_can_cycle 0.0" in rendered
        assert 'connbalance_agent_requests_total{result="rejected"} 1.0' in rendered

    run(scenario())


def test_a_request_whose_deadline_is_still_ahead_by_a_millisecond_is_accepted():
    async def scenario() -> None:
        agent = engine(quiet_conns(4))
        await agent.fake_clock.advance(29.999)
        status = await agent.submit(request("just", 1, window=0.0, deadline_in=30.0))
        assert status.state is RequestState.RUNNING

    run(scenario())


def test_running_requests_hold_their_share_of_the_ceiling_until_they_have_cycled():
    # Ten connections at --max-fraction 0.5: a ceiling of five. Seed 3 closes "a" at 0.159, 1.029
    # and 1.580 s.
    async def scenario() -> None:
        agent = engine(quiet_conns(10), seed=3, max_fraction=0.5)
        first = await agent.submit(request("a", 3, window=2.0))
        assert first.state is RequestState.RUNNING
        second = await agent.submit(request("b", 3, window=2.0))
        assert second.state is RequestState.REJECTED
        assert second.reason == (
            "count 3 exceeds this agent's ceiling of 5 (--max-fraction 0.5 of 10 active "
            "connections, 3 of them held by running requests)"
        )
        await agent.fake_clock.advance(0.2)
        # One cycled: nine open, a ceiling of four, two still held by "a".
        assert (await agent.submit(request("c", 3, window=2.0))).state is RequestState.REJECTED
        assert (await agent.submit(request("d", 2, window=2.0))).state is RequestState.RUNNING
        await agent.fake_clock.advance(5.0)
        # Both done: five open, a ceiling of two, nothing held.
        assert (await agent.submit(request("e", 2, window=2.0))).state is RequestState.RUNNING
        assert agent.cycled_total == 5

    run(scenario())


def test_a_repeated_id_returns_the_known_status_and_schedules_nothing():
    async def scenario() -> None:
        agent = engine(quiet_conns(4))
        await agent.submit(request("once", 1, window=1.0))
        await agent.fake_clock.advance(2.0)
        again = await agent.submit(request("once", 1, window=1.0))
        assert (again.duplicate, again.state, again.cycled) == (True, RequestState.DONE, 1)
        assert agent.fake_clock.sleeping() == []
        await agent.fake_clock.advance(2.0)
        assert len(agent.closed) == 1

    run(scenario())


def test_a_slot_whose_connection_left_by_itself_closes_the_next_one_instead():
    async def scenario() -> None:
        # Neither is quiet for 500 ms yet; "first" is the nearer to quiet, so comes first, and
        # leaves while its close waits.
        conns = [
            Conn("first", activity=(-0.25,), leaves_at=0.125),
            Conn("second", activity=(-0.125,)),
        ]
        agent = engine(conns)
        await agent.submit(request("r", 1, window=0.0, quiet_millis=500))
        final = await run_out(agent, "r", seconds=1.0)
        # "first" would be quiet at 0.25 s but is gone by then; "second" is quiet at 0.375 s.
        assert agent.closed == [Closed(0.375, "second", graceful=True)]
        assert final.cycled == 1

    run(scenario())


def test_the_last_request_time_is_the_clocks_wall_time():
    async def scenario() -> None:
        agent = engine(quiet_conns(2))
        await agent.fake_clock.advance(12.5)
        await agent.submit(request("r", 1, window=0.0))
        sample = agent.metrics.registry.get_sample_value(
            "connbalance_agent_last_request_timestamp_seconds"
        )
        assert sample == (START + timedelta(seconds=12.5)).timestamp()

    run(scenario())


def test_direct_closes_wait_for_quiet_up_to_their_deadline_and_skip_unknown_ids():
    async def scenario() -> None:
        agent = engine([Conn("talker", activity=(0.0, 0.25)), Conn("chatty", chatty=True)])
        closing = asyncio.ensure_future(
            agent.close(["talker", "chatty", "nope"], quiet_millis=500, deadline_seconds=2.0)
        )
        await agent.fake_clock.advance(3.0)
        assert await closing == [CloseOutcome.GRACEFUL, CloseOutcome.FORCED, None]
        assert agent.closed == [
            Closed(0.75, "talker", graceful=True),
            Closed(pytest.approx(2.0), "chatty", graceful=False),
        ]

    run(scenario())


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_the_fake_clock_returns_at_once_from_a_sleep_of_no_time(seconds):
    async def scenario() -> None:
        clock = FakeClock()
        await clock.sleep(seconds)
        assert clock.elapsed() == 0.0

    run(scenario())


def test_the_fake_clock_wakes_sleepers_in_order_each_at_its_own_time():
    async def scenario() -> None:
        clock = FakeClock()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.elapsed()))

        tasks = [
            asyncio.ensure_future(sleeper(name, seconds))
            for name, seconds in [("late", 2.0), ("early", 0.5), ("tie-1", 1.0), ("tie-2", 1.0)]
        ]
        await clock.advance(1.0)
        assert woke == [("early", 0.5), ("tie-1", 1.0), ("tie-2", 1.0)]
        assert clock.now() == START + timedelta(seconds=1.0)
        await clock.advance(5.0)
        assert woke[-1] == ("late", 2.0)
        assert clock.elapsed() == 6.0
        await asyncio.gather(*tasks)

    run(scenario())
