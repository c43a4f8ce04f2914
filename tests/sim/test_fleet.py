"""The whole simulator, real parts only: every client is still connected after a rolling restart."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from connbalance_sim import measures, prom
from connbalance_sim.measures import Record
from connbalance_sim.scenario import Scenario, run
from connbalance_sim.strategies import FACTORIES, Nothing

SMALL = Scenario(servers=3, clients=30, restarts=3, duration=2.0, pause=0.3, warmup=0.3,
                 ping=0.5, net="127.0.8", block=7)


def test_conserves_clients_through_a_rolling_restart_and_cycles_nothing_on_its_own():
    record = asyncio.run(run(SMALL, Nothing()))
    restarted = [e.pod for e in record.events if e.kind == "restart"]
    assert restarted == ["sim-0", "sim-1", "sim-2"]
    last = record.samples[-1]
    assert set(last.loads) == {"sim-0", "sim-1", "sim-2"}
    # The servers' gauges, the clients' streams and the agents' connections all count 30.
    assert last.total == 30
    assert record.extra["client_streams"] == 30
    assert record.extra["agent_connections"] == 30
    # Only the restarts broke connections: nothing was closed while its pod was in service.
    assert record.cycled_at == ()
    assert record.calls > 0


@pytest.mark.netadmin
def test_rebalances_with_the_agent_out_of_the_data_path_in_reset_mode():
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    scenario = replace(SMALL, agent_mode="reset", clients=45, duration=8.0, settle=1.0,
                       step_interval=1.0, window=1.0)
    record = asyncio.run(run(scenario, FACTORIES["connbalance-steer"]()))
    _assert_the_controller_lowered_the_skew(record, clients=45)


@pytest.mark.prometheus
def test_rebalances_reading_load_through_a_real_prometheus():
    if prom.find_binary() is None:
        pytest.skip("no prometheus binary (make system-deps installs Debian's)")
    scenario = replace(SMALL, metrics="prometheus", clients=45, duration=10.0, settle=1.0,
                       step_interval=1.0, window=1.0, block=6)
    record = asyncio.run(run(scenario, FACTORIES["connbalance-steer"]()))
    _assert_the_controller_lowered_the_skew(record, clients=45)


def _assert_the_controller_lowered_the_skew(record: Record, *, clients: int) -> None:
    # Timing on a busy machine decides how many steps fit in the run, so not "balanced by then":
    # drains were asked, connections moved, the skew fell, and no client was lost.
    assert [e.pod for e in record.events if e.kind == "drain"]
    assert measures.cycled(record) > 0
    before = measures.skew_before(record)
    assert before is not None
    assert measures.final_skew(record) < before
    assert record.samples[-1].total == clients
    assert record.extra["client_streams"] == clients
