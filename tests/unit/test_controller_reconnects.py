"""After a step the controller waits for the clients it cycled to reconnect before it judges.

Measured while they are still away (in backoff after refused dials, on a busy machine: the
scenario matrix saw 185 of 1,200 away two seconds after a step), the pods that will take them
look emptier than they are, and the next step sheds again what is only on its way.
"""

from __future__ import annotations

import asyncio

from connbalance.controller import Controller, ControllerState
from connbalance.model import Phase, PodLoad, PodName, PodState, PolicyName
from connbalance.planner import plan
from tests.unit.fakes import AnnotatingActuator, DictLoads, FakeClock, ListEvents, ListFleet
from tests.unit.test_controller import make_policy

NAME = PolicyName("teleport/auth")
INTERVAL = 20.0  # stepIntervalSeconds, make_policy's
COOLDOWN = 30.0  # windowSeconds 10 + stepIntervalSeconds 20


class Pool:
    def __init__(self, values: dict[str, float]) -> None:
        self.clock = FakeClock()
        self.fleet = ListFleet.ready(list(values), since=self.clock.now - 1000)
        self.loads = DictLoads(self.clock, dict(values))
        self.actuator = AnnotatingActuator(self.fleet)
        self.state = ControllerState()
        self.controller_policy = make_policy(actuation={"windowSeconds": 10,
                                                        "steering": "agent"})
        self.controller = Controller(
            name=NAME, policy=self.controller_policy,
            loads=self.loads, fleet=self.fleet, actuator=self.actuator, events=ListEvents(),
            clock=self.clock)

    def tick(self):
        result = asyncio.run(self.controller.tick(self.state))
        self.state = result.state
        return result


def _snapshot(values: dict[str, float], *, now: float
              ) -> tuple[dict[PodName, PodLoad], list[PodState]]:
    pods = [PodState(name=PodName(n), ready=True, ready_since=0.0) for n in values]
    return {PodName(n): PodLoad(pod=PodName(n), load=v, timestamp=now)
            for n, v in values.items()}, pods


def test_a_pool_short_of_the_clients_just_cycled_is_not_judged_until_they_are_back():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    first = len(pool.actuator.delivered)
    assert pool.state.step == 1
    # The shedding pods are down to 205, but c has only 60 of the 190 it will get.
    pool.loads.values = {"a": 205, "b": 205, "c": 60}
    pool.clock.advance(COOLDOWN + 1)
    waiting = pool.tick()
    assert waiting.state.phase is Phase.COOLING_DOWN
    assert "130 cycled client(s) to reconnect" in waiting.state.reason
    assert len(pool.actuator.delivered) == first, "no step on a pool short of 130 clients"
    pool.loads.values = {"a": 205, "b": 205, "c": 190}
    pool.clock.advance(2)
    assert pool.tick().state.phase is Phase.BALANCED
    assert len(pool.actuator.delivered) == first


def test_clients_that_stop_coming_back_hold_it_for_one_step_interval_after_the_last_arrival():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    first = len(pool.actuator.delivered)
    pool.loads.values = {"a": 205, "b": 205, "c": 60}
    pool.clock.advance(COOLDOWN + 1)
    assert pool.tick().state.phase is Phase.COOLING_DOWN
    pool.clock.advance(INTERVAL - 1)
    assert pool.tick().state.phase is Phase.COOLING_DOWN, "no arrival for 19 s: still waiting"
    pool.clock.advance(1)
    assert pool.tick().state.phase is Phase.REBALANCING, "none for a step interval: act"
    assert len(pool.actuator.delivered) > first


def test_clients_still_arriving_hold_it_at_most_two_cooldowns_after_the_step():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    stepped_at = pool.clock.now
    pool.clock.advance(COOLDOWN + 1)
    c = 60
    phases = []
    while pool.clock.now < stepped_at + 4 * COOLDOWN:
        c += 1  # one more every 5 s: slow, but coming
        pool.loads.values = {"a": 205, "b": 205, "c": c}
        result = pool.tick()
        phases.append((pool.clock.now - stepped_at, result.state.phase))
        if result.state.phase is not Phase.COOLING_DOWN:
            break
        pool.clock.advance(5)
    waited, phase = phases[-1]
    assert phase is Phase.REBALANCING
    assert 2 * COOLDOWN <= waited < 2 * COOLDOWN + 5


def test_clients_still_away_after_the_wait_are_planned_as_landing_evenly():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    first = len(pool.actuator.delivered)
    # 135 of the step's clients never come back in time; they will land evenly: 45 each.
    pool.loads.values = {"a": 205, "b": 205, "c": 55}
    pool.clock.advance(2 * COOLDOWN)
    result = pool.tick()
    assert result.state.phase is Phase.REBALANCING
    assert "counting 135 cycled client(s) still reconnecting as landing evenly" in (
        result.state.reason)
    step = {p: r.count for p, r in pool.actuator.delivered[first:]}
    loads, pods = _snapshot({"a": 250.0, "b": 250.0, "c": 100.0}, now=pool.clock.now)
    expected = plan(loads=loads, pods=pods, policy=pool.controller_policy, now=pool.clock.now,
                    engaged=True)
    assert step == {d.pod: d.count for d in expected.drains}
    assert result.seen.loads == {"a": 205, "b": 205, "c": 55}, "status shows what was measured"
    assert pool.state.step_total == 465, "the next step counts only what it measured"


def test_a_few_clients_short_within_the_ceilings_margin_do_not_hold_it():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    # 3 short of 600: under the margin of mean x targetTolerance / 2 (199 x 0.025, about 5).
    pool.loads.values = {"a": 205, "b": 205, "c": 187}
    pool.clock.advance(COOLDOWN + 1)
    assert pool.tick().state.phase is Phase.BALANCED


def test_the_total_at_the_step_survives_a_status_round_trip():
    pool = Pool({"a": 364, "b": 236, "c": 0})
    pool.tick()
    assert pool.state.step_total == 600
    assert ControllerState.from_status(pool.state.to_status()).step_total == 600
