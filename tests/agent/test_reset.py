"""Reset mode on a loopback address: real sockets, real SOCK_DESTROY (needs CAP_NET_ADMIN)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from connbalance.agent.netlink import SockDiag
from connbalance.agent.reset import ResetAgent, ResetUnavailable, check_sock_destroy
from connbalance.model import DrainRequest
from connbalance.ports.clock import SYSTEM_CLOCK
from tests.agent.grpcfleet import FleetClient, FleetServer
from tests.agent.support import deadline_in, run

HOST = "127.0.4.2"
pytestmark = pytest.mark.netadmin


@pytest.fixture(autouse=True, scope="module")
def _sock_destroy_works() -> None:
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")


def test_the_scan_sees_each_established_socket_with_its_peer_bytes_and_idleness():
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            served, _ = listener.accept()
            with served:
                client.sendall(b"hello")
                assert served.recv(5) == b"hello"
                served.sendall(b"answer!")
                assert client.recv(7) == b"answer!"
                time.sleep(0.25)
                with SockDiag() as diag:
                    [found] = diag.established(port=port, address=HOST)
                assert found.remote == client.getsockname()
                assert (found.bytes_received, found.bytes_sent) == (5, 7)
                assert found.idle_ms >= 200
                assert not found.peer_spoke_last
                client.sendall(b"another request")
                time.sleep(0.05)
                with SockDiag() as diag:
                    [found] = diag.established(port=port, address=HOST)
                assert found.peer_spoke_last
                assert found.recv_queue == len(b"another request")


def test_destroying_a_socket_resets_the_client_and_a_second_destroy_finds_nothing():
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            served, _ = listener.accept()
            with served, SockDiag() as diag:
                [found] = diag.established(port=port, address=HOST)
                assert diag.destroy(found)
                assert not diag.destroy(found)
                client.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    client.recv(1)


def test_a_drain_destroys_only_idle_sockets_when_enough_idle_ones_exist():
    async def scenario() -> None:
        server = FleetServer(host=HOST)
        await server.start()
        agent = ResetAgent(port=server.port, max_fraction=1.0)
        await agent.start()
        target = f"{HOST}:{server.port}"
        idle = [FleetClient(target=target, name=f"idle-{i}", unary_interval=None) for i in range(6)]
        busy = [
            FleetClient(target=target, name=f"busy-{i}", unary_interval=None, chatty_interval=0.02)
            for i in range(4)
        ]
        everyone = idle + busy
        try:
            for client in everyone:
                await client.start()
            await asyncio.gather(*(c.wait_streaming() for c in everyone))
            await asyncio.sleep(0.5)
            assert agent.active_count() == 10
            before = {c.id for c in agent.connections()}
            request = DrainRequest.from_wire(
                now=SYSTEM_CLOCK.now(),
                data={
                    "id": "r1",
                    "count": 4,
                    "windowSeconds": 0.5,
                    "quietMillis": 300,
                    "deadline": deadline_in(15),
                },
            )
            await agent.submit(request)
            final = await agent.wait("r1", timeout=30)
            assert (final.cycled, final.forced) == (4, 0)
            async with asyncio.timeout(20):
                while sum(c.reconnects for c in idle) < 4 or agent.active_count() < 10:
                    await asyncio.sleep(0.05)
            assert sum(c.reconnects for c in idle) == 4
            assert sum(c.reconnects for c in busy) == 0
            assert len(before - {c.id for c in agent.connections()}) == 4
            body = agent.metrics.render().decode()
            assert (
                'connbalance_agent_cycled_connections_total{how="graceful",mode="reset"} 4.0'
                in body
            )
        finally:
            await asyncio.gather(*(c.stop() for c in everyone))
            await agent.stop()
            await server.stop()

    run(scenario())


def test_when_no_socket_goes_quiet_the_deadline_destroys_one_anyway_and_counts_it_forced():
    async def scenario() -> None:
        server = FleetServer(host=HOST)
        await server.start()
        agent = ResetAgent(port=server.port, max_fraction=1.0)
        await agent.start()
        busy = FleetClient(
            target=f"{HOST}:{server.port}", name="busy", unary_interval=None, chatty_interval=0.01
        )
        try:
            await busy.start()
            await busy.wait_streaming()
            request = DrainRequest.from_wire(
                now=SYSTEM_CLOCK.now(),
                data={
                    "id": "r2",
                    "count": 1,
                    "windowSeconds": 0,
                    "quietMillis": 2000,
                    "deadline": deadline_in(1.0),
                },
            )
            await agent.submit(request)
            final = await agent.wait("r2", timeout=30)
            assert (final.cycled, final.forced) == (1, 1)
            async with asyncio.timeout(20):
                while busy.reconnects < 1:
                    await asyncio.sleep(0.05)
        finally:
            await busy.stop()
            await agent.stop()
            await server.stop()

    run(scenario())


def test_the_scan_filtered_on_an_address_lists_only_sockets_on_that_address():
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port)), socket.create_connection(("::1", port)):
            served = [listener.accept()[0] for _ in range(2)]
            with SockDiag() as diag:
                assert [s.local[0] for s in diag.established(port=port, address=HOST)] == [HOST]
                assert [s.local[0] for s in diag.established(port=port, address="::1")] == ["::1"]
                assert diag.established(port=port, address="127.0.4.99") == []
                assert len(diag.established(port=port)) == 2
            for sock in served:
                sock.close()


def test_a_dual_stack_server_sees_ipv4_clients_as_plain_addresses_and_can_destroy_them():
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            served, _ = listener.accept()
            with served, SockDiag() as diag:
                [found] = diag.established(port=port, address=HOST)
                assert found.family == socket.AF_INET6
                assert found.remote == client.getsockname()
                assert diag.destroy(found)
                client.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
