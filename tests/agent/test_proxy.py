"""Proxy mode with real grpcio servers and clients, in-process and over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from connbalance.agent import AgentServer, CloseOutcome, ProxyAgent, RequestState
from connbalance.agent.proxy import DEFAULT_REFUSAL, Refusal
from connbalance.model import DrainRequest
from connbalance.ports.clock import SYSTEM_CLOCK
from tests.agent.fakeclock import FakeClock
from tests.agent.grpcfleet import FleetClient, FleetServer, start_clients, stop_clients
from tests.agent.support import HOST, deadline_in, run

TOKEN = "s3cret-token"


@dataclass
class Rig:
    server: FleetServer
    agent: ProxyAgent
    http: AgentServer
    clients: list[FleetClient]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http.port}"

    def ids(self) -> set[str]:
        return {c.id for c in self.agent.connections()}

    async def settle(self, expected: int, *, timeout: float = 20.0) -> None:
        """Wait until every client holds a stream again through the proxy."""
        async with asyncio.timeout(timeout):
            while self.agent.active_count() != expected or sum(
                1 for c in self.clients if c.streams_opened == 0
            ):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def rig(
    n: int,
    *,
    max_fraction: float = 0.5,
    state_file: Path | None = None,
    unary: float | None = 0.5,
    rng: random.Random | None = None,
) -> AsyncIterator[Rig]:
    server = FleetServer(host=HOST)
    await server.start()
    agent = ProxyAgent(
        listen=(HOST, 0),
        upstream=(HOST, server.port),
        max_fraction=max_fraction,
        state_file=state_file,
        rng=rng,
    )
    await agent.start()
    http = AgentServer(agent, host=HOST, port=0, token=TOKEN)
    await http.start()
    clients = await start_clients(f"{HOST}:{agent.port}", n, unary_interval=unary)
    try:
        yield Rig(server=server, agent=agent, http=http, clients=clients)
    finally:
        await stop_clients(clients)
        await http.stop()
        await agent.stop()
        await server.stop()


def drain(
    request_id: str, count: int, *, window: float = 1.0, quiet: int = 100, deadline: float = 30.0
) -> dict[str, object]:
    return {
        "id": request_id,
        "count": count,
        "windowSeconds": window,
        "quietMillis": quiet,
        "deadline": deadline_in(deadline),
    }


def drain_request(request_id: str, count: int, **fields: float) -> DrainRequest:
    return DrainRequest.from_wire(drain(request_id, count, **fields), now=SYSTEM_CLOCK.now())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_drain_of_k_out_of_n_cycles_exactly_k_and_no_unary_call_fails(loop):
    async def scenario() -> None:
        async with rig(30) as r:
            before = r.ids()
            status = await r.agent.submit(drain_request("k-of-n", 6))
            assert status.state is RequestState.RUNNING
            final = await r.agent.wait("k-of-n", timeout=30)
            assert (final.state, final.cycled, final.forced) == (RequestState.DONE, 6, 0)
            await r.settle(30)
            assert len(before - r.ids()) == 6
            assert sum(c.reconnects for c in r.clients) == 6
            assert r.server.streams_opened == 36
            assert [f for c in r.clients for f in c.unary_failed] == []
            assert sum(c.unary_ok for c in r.clients) > 0

    run(scenario(), loop=loop)


def test_an_authorized_post_cycles_10_of_100_and_status_says_done():
    async def scenario() -> None:
        async with rig(100) as r, aiohttp.ClientSession() as http:
            before = r.ids()
            body = drain("x1", 10, window=2.0, quiet=100, deadline=30.0)
            async with http.post(f"{r.url}/v1/drain", json=body) as resp:
                assert resp.status == 401
            await asyncio.sleep(0.5)
            assert r.ids() == before

            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{r.url}/v1/drain", json=body, headers=headers) as resp:
                assert resp.status == 202
                assert (await resp.json())["state"] == "running"
            # When each close happens is the engine's schedule, asserted on a fake clock in
            # test_engine.py; here, what the clients see.
            final = await r.agent.wait("x1", timeout=30)
            assert final.cycled == 10
            async with http.get(f"{r.url}/status") as resp:
                status = await resp.json()
            assert status["mode"] == "proxy"
            assert status["cycled_total"] == 10
            assert status["requests"] == [
                {"id": "x1", "count": 10, "cycled": 10, "forced": 0, "state": "done", "reason": ""}
            ]
            await r.settle(100)
            assert len(before - r.ids()) == 10
            assert sum(c.reconnects for c in r.clients) == 10
            assert [f for c in r.clients for f in c.unary_failed] == []

    run(scenario())


def test_bad_tokens_bad_json_an_oversized_count_and_a_repeated_id_close_nothing():
    async def scenario() -> None:
        async with rig(10, max_fraction=0.5) as r, aiohttp.ClientSession() as http:
            good = {"Authorization": f"Bearer {TOKEN}"}

            async def post(body: object, headers: dict[str, str]) -> tuple[int, dict]:
                data = body if isinstance(body, str) else None
                kwargs = {"data": data} if data is not None else {"json": body}
                async with http.post(f"{r.url}/v1/drain", headers=headers, **kwargs) as resp:
                    return resp.status, await resp.json()

            before = r.ids()
            assert (await post(drain("t1", 1), {}))[0] == 401
            assert (await post(drain("t2", 1), {"Authorization": "Bearer wrong"}))[0] == 401
            assert (await post(drain("t3", 1), {"Authorization": TOKEN}))[0] == 401
            code, answer = await post("{not json", good)
            assert (code, answer["field"]) == (400, "body")
            code, answer = await post({"id": "t4", "count": 1, "windowSecond": 1}, good)
            assert (code, answer["field"]) == (400, "windowSecond")
            code, answer = await post({"id": "t5", "count": -1}, good)
            assert (code, answer["field"]) == (400, "count")
            code, answer = await post(drain("t6", 6), good)
            assert code == 422
            assert answer["state"] == "rejected"
            assert "ceiling of 5" in answer["reason"]
            code, answer = await post({**drain("t7", 1), "deadline": "2020-01-01T00:00:00Z"}, good)
            assert (code, answer["state"]) == (422, "rejected")
            await asyncio.sleep(1.0)
            assert r.ids() == before

            code, answer = await post(drain("once", 1, window=0.0), good)
            assert code == 202
            await r.agent.wait("once", timeout=30)
            await r.settle(10)
            after_first = r.ids()
            assert len(before - after_first) == 1
            code, answer = await post(drain("once", 1, window=0.0), good)
            assert (code, answer["duplicate"], answer["cycled"]) == (200, True, 1)
            await asyncio.sleep(1.0)
            assert r.ids() == after_first
            assert r.agent.cycled_total == 1

            async with http.get(f"{r.url}/metrics") as resp:
                metrics = await resp.text()
            assert 'connbalance_agent_requests_total{result="unauthorized"} 3.0' in metrics
            assert 'connbalance_agent_requests_total{result="invalid"} 3.0' in metrics
            assert 'connbalance_agent_requests_total{result="rejected"} 2.0' in metrics
            assert 'connbalance_agent_requests_total{result="duplicate"} 1.0' in metrics
            assert 'connbalance_agent_requests_total{result="accepted"} 1.0' in metrics
            assert (
                'connbalance_agent_cycled_connections_total{how="graceful",mode="proxy"} 1.0'
                in metrics
            )
            assert "connbalance_agent_active_connections 10.0" in metrics

    run(scenario())


def test_a_connection_that_never_goes_quiet_is_closed_at_the_deadline_and_counted_as_forced():
    async def scenario() -> None:
        server = FleetServer(host=HOST)
        await server.start()
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, server.port), max_fraction=1.0)
        await agent.start()
        chatty = FleetClient(
            target=f"{HOST}:{agent.port}", name="chatty", unary_interval=None, chatty_interval=0.01
        )
        await chatty.start()
        try:
            await chatty.wait_streaming()
            request = drain_request("busy", 1, window=0.0, quiet=2000, deadline=1.5)
            await agent.submit(request)
            final = await agent.wait("busy", timeout=30)
            assert (final.cycled, final.forced) == (1, 1)
            body = agent.metrics.render().decode()
            assert (
                'connbalance_agent_cycled_connections_total{how="forced",mode="proxy"} 1.0' in body
            )
            assert (
                'connbalance_agent_cycled_connections_total{how="graceful",mode="proxy"} 0.0'
                in body
            )
        finally:
            await chatty.stop()
            await agent.stop()
            await server.stop()

    run(scenario())


def test_a_request_id_seen_before_a_restart_is_not_acted_on_again(tmp_path):
    state = tmp_path / "seen.json"

    async def scenario() -> None:
        async with rig(4, max_fraction=1.0, state_file=state) as r:
            await r.agent.submit(drain_request("restart-1", 1, window=0.0))
            assert (await r.agent.wait("restart-1", timeout=30)).cycled == 1
        async with rig(4, max_fraction=1.0, state_file=state) as r:
            before = r.ids()
            again = await r.agent.submit(drain_request("restart-1", 1, window=0.0))
            assert again.duplicate
            assert (again.state, again.cycled) == (RequestState.DONE, 1)
            await asyncio.sleep(0.5)
            assert r.ids() == before
            assert r.agent.status().to_wire()["requests"][0]["id"] == "restart-1"

    run(scenario())


def test_direct_closes_report_how_each_connection_went_and_skip_unknown_ids():
    async def scenario() -> None:
        async with rig(3, max_fraction=1.0, unary=5.0) as r:
            target = sorted(r.ids())[0]
            outcomes = await r.agent.close([target, "no-such"], quiet_millis=50)
            assert outcomes == [CloseOutcome.GRACEFUL, None]
            await r.settle(3)
            assert target not in r.ids()
            assert sum(c.reconnects for c in r.clients) == 1

    run(scenario())


def test_bytes_and_half_closes_pass_through_unchanged_and_are_counted():
    async def scenario() -> None:
        release = asyncio.Event()

        async def echo_after_fin_then_close(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            data = await reader.read()  # until the client's FIN
            writer.write(data[::-1])
            await writer.drain()
            await release.wait()  # held open, so the proxy's counters can be read
            writer.close()

        upstream = await asyncio.start_server(echo_after_fin_then_close, HOST, 0)
        port = upstream.sockets[0].getsockname()[1]
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=1.0)
        await agent.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, agent.port)
            payload = bytes(range(256)) * 4096
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            assert await reader.readexactly(len(payload)) == payload[::-1]
            [info] = agent.connections()
            assert (info.bytes_in, info.bytes_out) == (len(payload), len(payload))
            release.set()
            assert await reader.read() == b""  # the server's FIN came through too
            writer.close()
            async with asyncio.timeout(10):
                while agent.connections():
                    await asyncio.sleep(0.01)
        finally:
            release.set()
            await agent.stop()
            upstream.close()
            await upstream.wait_closed()

    run(scenario())


async def new_client(agent: ProxyAgent) -> str:
    """Connect once: "refused" when the kernel refused the connect (the listener is closed),
    "reset" when the proxy took the connection and reset it (the client saw the reset), "served"
    when it took it. The proxy decides as it accepts, so no timing is guessed."""
    refused, active = agent.refused_total, agent.active_count()
    try:
        reader, writer = await asyncio.open_connection(HOST, agent.port)
    except ConnectionRefusedError:
        return "refused"
    try:
        async with asyncio.timeout(10):
            while agent.refused_total == refused and agent.active_count() == active:
                await asyncio.sleep(0.01)
            if agent.refused_total == refused:
                return "served"
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
            return "reset"
    finally:
        writer.close()


async def listening_again(agent: ProxyAgent) -> None:
    """Wait until the listener is open again: opening it is a real bind, after the clock."""
    async with asyncio.timeout(10):
        while not agent.listening:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def fake_clock_proxy(
    *, seed: int = 0, refusal: Refusal = DEFAULT_REFUSAL
) -> AsyncIterator[tuple[ProxyAgent, FakeClock]]:
    """A proxy on real sockets whose clock moves only when the test advances it."""
    writers: list[asyncio.StreamWriter] = []
    upstream = await asyncio.start_server(lambda _r, w: writers.append(w), HOST, 0)
    clock = FakeClock()
    agent = ProxyAgent(
        listen=(HOST, 0),
        upstream=(HOST, upstream.sockets[0].getsockname()[1]),
        max_fraction=1.0,
        rng=random.Random(seed),
        clock=clock,
        refusal=refusal,
    )
    await agent.start()
    try:
        yield agent, clock
    finally:
        await agent.stop()
        for writer in writers:
            writer.close()
        upstream.close()
        await upstream.wait_closed()


def test_while_steering_the_kernel_refuses_new_connects_until_the_refusal_ends_on_the_clock():
    async def scenario() -> None:
        async with fake_clock_proxy() as (agent, clock):
            assert agent.refusal == "connect"  # the default
            _reader, held = await asyncio.open_connection(HOST, agent.port)
            async with asyncio.timeout(10):
                while agent.active_count() < 1:
                    await asyncio.sleep(0.01)
            agent.refuse_new(0.5)
            assert await new_client(agent) == "refused"
            await clock.advance(0.499)
            assert await new_client(agent) == "refused"
            # The connection made before the refusal still carries bytes.
            held.write(b"still here")
            await held.drain()
            async with asyncio.timeout(10):
                while agent.connections()[0].bytes_in < len(b"still here"):
                    await asyncio.sleep(0.01)
            await clock.advance(0.001)
            await listening_again(agent)
            assert await new_client(agent) == "served"
            # The kernel refused those connects: the proxy never saw them.
            assert agent.refused_total == 0
            held.close()

    run(scenario())


def test_with_the_reset_refusal_new_connections_are_taken_and_reset_until_it_ends():
    async def scenario() -> None:
        async with fake_clock_proxy(refusal="reset") as (agent, clock):
            agent.refuse_new(0.5)
            assert await new_client(agent) == "reset"
            await clock.advance(0.499)
            assert await new_client(agent) == "reset"
            await clock.advance(0.001)
            assert await new_client(agent) == "served"
            assert agent.refused_total == 2

    run(scenario())


def test_a_steering_request_refuses_new_connects_for_its_window_and_a_second_more():
    async def scenario() -> None:
        async with fake_clock_proxy() as (agent, clock):
            body = {**drain("steer", 0, window=2.0), "steer": True}
            await agent.submit(DrainRequest.from_wire(body, now=clock.now()))
            await clock.advance(2.999)
            assert await new_client(agent) == "refused"
            await clock.advance(0.001)
            await listening_again(agent)
            assert await new_client(agent) == "served"

    run(scenario())


def test_a_port_taken_while_the_listener_was_closed_is_tried_again_until_it_is_free():
    async def scenario() -> None:
        async with fake_clock_proxy() as (agent, clock):
            agent.refuse_new(0.5)
            squatter = socket.socket()  # no SO_REUSEADDR: the proxy's bind fails while it listens
            squatter.bind((HOST, agent.port))
            squatter.listen()
            try:
                await clock.advance(0.5)
                await clock.advance(0.3)  # three tries, each refused
                assert not agent.listening
            finally:
                squatter.close()
            await clock.advance(0.1)
            await listening_again(agent)
            assert await new_client(agent) == "served"

    run(scenario())


def test_a_proxy_stopped_while_its_listener_is_closed_stops_cleanly():
    async def scenario() -> None:
        async with fake_clock_proxy() as (agent, _clock):
            agent.refuse_new(30.0)
            assert not agent.listening
        assert not agent.listening

    run(scenario())


def test_the_proxy_closes_connections_on_the_seeded_schedule_of_its_clock():
    # Seed 4 over a 2 s window and 3 closes: at 0.1574, 0.7354 and 1.5974 s.
    async def scenario() -> None:
        async with fake_clock_proxy(seed=4) as (agent, clock):
            conns = [await asyncio.open_connection(HOST, agent.port) for _ in range(5)]
            async with asyncio.timeout(10):
                while agent.active_count() < 5:
                    await asyncio.sleep(0.01)
            body = drain("spread", 3, window=2.0, quiet=0)
            await agent.submit(DrainRequest.from_wire(body, now=clock.now()))
            await clock.advance(0.0)
            assert clock.sleeping() == pytest.approx([0.1574, 0.7354, 1.5974], abs=1e-4)
            cycled = []
            for at in (0.157, 0.158, 0.735, 0.736, 1.597, 1.598):
                await clock.advance(at - clock.elapsed())
                status = agent.request_status("spread")
                assert status is not None
                cycled.append(status.cycled)
            assert cycled == [0, 1, 1, 2, 2, 3]
            eofs = 0
            for reader, writer in conns:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        eofs += await reader.read(1) == b""
                writer.close()
            assert eofs == 3

    run(scenario())


def test_several_agents_in_one_process_keep_separate_metrics():
    async def scenario() -> None:
        first = ProxyAgent(listen=(HOST, 0), upstream=(HOST, 1), max_fraction=1.0)
        second = ProxyAgent(listen=(HOST, 0), upstream=(HOST, 1), max_fraction=1.0)
        first.metrics.count_request("invalid")
        assert b'result="invalid"} 1.0' in first.metrics.render()
        assert b'result="invalid"} 0.0' in second.metrics.render()

    run(scenario())


def test_a_call_the_server_is_still_answering_holds_the_close_back_until_the_answer():
    async def scenario() -> None:
        server = FleetServer(host=HOST)
        await server.start()
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, server.port), max_fraction=1.0)
        await agent.start()
        client = FleetClient(target=f"{HOST}:{agent.port}", name="waiting", unary_interval=None)
        await client.start()
        try:
            await client.wait_streaming()
            call = asyncio.create_task(client.slow_call(1500))
            async with asyncio.timeout(10):
                while not server.calls_started:  # the request is at the server
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # longer than quietMillis: the connection is silent
            request = drain_request("slow", 1, window=0.0, quiet=100, deadline=20)
            await agent.submit(request)
            final = await agent.wait("slow", timeout=30)
            # Closed before the answer, the call would have failed; closed after it, gracefully.
            assert await call == b"done"
            assert (final.cycled, final.forced) == (1, 0)
        finally:
            await client.stop()
            await agent.stop()
            await server.stop()

    run(scenario())


def test_two_requests_running_at_once_share_one_ceiling():
    async def scenario() -> None:
        async with rig(10, max_fraction=0.5) as r:
            first = await r.agent.submit(drain_request("a", 3, window=3.0))
            second = await r.agent.submit(drain_request("b", 3, window=3.0))
            assert first.state is RequestState.RUNNING
            assert second.state is RequestState.REJECTED
            assert "3 of them held by running requests" in second.reason
            third = await r.agent.submit(drain_request("c", 2, window=3.0))
            assert third.state is RequestState.RUNNING
            await r.agent.wait("a", timeout=30)
            await r.agent.wait("c", timeout=30)
            assert r.agent.cycled_total == 5

    run(scenario())


def test_an_oversized_body_is_refused_as_too_large():
    async def scenario() -> None:
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, 1), max_fraction=1.0)
        http = AgentServer(agent, host=HOST, port=0, token=TOKEN)
        await http.start()
        try:
            async with aiohttp.ClientSession() as session:
                body = '{"id": "big", "count": 1, "policy": "' + "x" * 100_000 + '"}'
                async with session.post(
                    f"http://{HOST}:{http.port}/v1/drain",
                    data=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert resp.status == 413
                    assert (await resp.json())["field"] == "body"
            assert agent.status().requests == ()
        finally:
            await http.stop()

    run(scenario())
