"""The whole simulator, real parts only: every client is still connected after a rolling restart."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from connbalance.model import DrainRequest, RequestId
from connbalance_sim import measures, prom
from connbalance_sim.balancer import FlowHashBalancer
from connbalance_sim.fleet import LocalFleet
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


def _require_reset_mode(*, steering: bool) -> None:
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    if steering and shutil.which("nft") is None:
        pytest.skip("no nft command (make system-deps installs nftables)")


@pytest.mark.netadmin
def test_rebalances_with_the_agent_out_of_the_data_path_in_reset_mode():
    _require_reset_mode(steering=False)
    scenario = replace(SMALL, agent_mode="reset", clients=45, duration=8.0, settle=1.0,
                       step_interval=1.0, window=1.0)
    record = asyncio.run(run(scenario, FACTORIES["connbalance-steer"]()))
    _assert_the_controller_lowered_the_skew(record, clients=45)


@pytest.mark.netadmin
def test_rebalances_in_reset_mode_with_the_agents_steering_in_the_kernel():
    _require_reset_mode(steering=True)
    scenario = replace(SMALL, agent_mode="reset", clients=45, duration=8.0, settle=1.0,
                       step_interval=1.0, window=1.0)
    record = asyncio.run(run(scenario, FACTORIES["connbalance"]()))
    _assert_the_controller_lowered_the_skew(record, clients=45)
    # The balancer never steered (it does only for connbalance-steer): every refused attempt is
    # a SYN the kernel of a shedding pod answered with a reset.
    assert record.refused > 0


@pytest.mark.netadmin
def test_a_shedding_reset_pod_refuses_new_connections_to_its_own_server_only_and_stays_ready():
    _require_reset_mode(steering=True)

    async def scenario() -> None:
        balancer = FlowHashBalancer(host="127.0.8.200", health_interval=0.1)
        await balancer.start()
        fleet = LocalFleet(hosts=["127.0.8.201", "127.0.8.202"], balancer=balancer,
                           agent_mode="reset")
        try:
            await fleet.start()
            for name in fleet.names:
                await fleet.wait_ready(name)
            shedding, other = fleet.pods()
            # One connection to shed: an agent takes no request for more than it holds.
            _, held = await asyncio.open_connection(shedding.host, shedding.grpc_port)
            now = datetime.now(UTC)
            status = await shedding.agent.submit(DrainRequest(
                id=RequestId("steer-1"), count=1, window_seconds=1.0, quiet_millis=0,
                deadline=now + timedelta(seconds=5), steer=True))
            assert status.reason == ""
            with pytest.raises(ConnectionRefusedError):
                await _connect(shedding.host, shedding.grpc_port)
            await _connect(other.host, other.grpc_port)
            # The balancer checks the metrics port, as a readiness probe checks a diag port:
            # several checks later the shedding pod is still in the pool.
            await asyncio.sleep(0.5)
            assert balancer.is_ready(shedding.name)
            # The window (1 s) plus the agent's margin (1 s): then it accepts again by itself.
            await asyncio.sleep(2.0)
            await _connect(shedding.host, shedding.grpc_port)
            held.close()
        finally:
            await fleet.stop()
            await balancer.stop()

    asyncio.run(scenario())


async def _connect(host: str, port: int) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2.0)
    writer.close()
    await writer.wait_closed()


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
