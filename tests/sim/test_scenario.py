"""The scenario's rules that scale with the fleet: how often clients call, how long a pod may
take to start."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from connbalance.model import PodName
from connbalance_sim.balancer import FlowHashBalancer
from connbalance_sim.fleet import LocalFleet
from connbalance_sim.scenario import Scenario, cancel_until_done


@pytest.mark.parametrize("clients", [60, 300, 1200])
def test_a_fleet_of_up_to_1200_clients_pings_every_two_seconds_as_the_matrix_measured(clients):
    assert Scenario(clients=clients, ping=2.0).ping_interval() == 2.0


def test_a_larger_fleet_pings_less_often_so_that_the_whole_fleet_calls_600_times_a_second():
    scenario = Scenario(servers=5, clients=3000, ping=2.0)
    assert scenario.ping_interval() == 5.0
    assert scenario.clients / scenario.ping_interval() == scenario.max_fleet_calls == 600.0


def test_a_pod_may_take_longer_to_start_the_more_clients_it_must_take():
    small, large = Scenario(servers=3, clients=300), Scenario(servers=5, clients=3000)
    assert small.start_timeout() == 25.0
    assert large.start_timeout() == 50.0


def test_the_scenario_json_says_how_often_clients_called_and_how_long_pods_could_take():
    as_json = Scenario(servers=5, clients=3000).to_json()
    assert as_json["ping_interval"] == 5.0
    assert as_json["start_timeout"] == 50.0


def test_a_fleet_gives_up_on_a_pod_after_its_own_start_timeout():
    ticks = itertools.count(0.0, 1.0)  # a fake clock: a second passes at every reading
    balancer = FlowHashBalancer(host="127.0.0.1")
    fleet = LocalFleet(hosts=["127.0.0.2"], balancer=balancer, start_timeout=3.0,
                       clock=lambda: next(ticks))
    with pytest.raises(TimeoutError, match="in 3s"):
        asyncio.run(fleet.wait_ready(PodName("sim-0")))


def test_a_task_that_loses_its_first_cancellation_is_cancelled_again_until_it_ends():
    async def loses_one_cancellation() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        await asyncio.sleep(60)

    async def scenario() -> asyncio.Task[None]:
        task = asyncio.create_task(loses_one_cancellation())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_until_done(task, every=0.01), timeout=5)
        return task

    assert asyncio.run(scenario()).cancelled()
