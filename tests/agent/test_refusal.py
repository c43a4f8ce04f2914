"""How a steering proxy refuses new connections, seen by real gRPC clients (grpcio here; grpc-go in
tests/sim/test_go_clients.py): GOAWAY costs a plaintext gRPC client no backoff and no failed
call, a reset costs its fail-fast calls the backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connbalance.agent import CloseOutcome
from connbalance.agent.h2 import H2_DRAIN_GOAWAY, H2_PREFACE, FrameCursor
from connbalance.agent.proxy import DEFAULT_REFUSAL, ProxyAgent, Refusal
from connbalance.model import DrainRequest, RequestId
from tests.agent.support import run

HOST = "127.0.15.1"
CLIENTS = 4
Report = dict[str, Any]


class Clients:
    """``python -m connbalance_sim.clients``, all fail-fast, and its latest report line."""

    def __init__(self, target: str) -> None:
        self._args = ["--target", target, "--count", str(CLIENTS), "--failfast", str(CLIENTS),
                      "--ping", "0.2", "--report", "0.1", "--ramp", "0.2", "--lifetime", "60",
                      "--log-failures"]
        self.latest: Report = {}
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connbalance_sim.clients", *self._args,
            stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read(self._process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.latest = json.loads(line)

    async def until(self, what: str, check: Callable[[Report], bool]) -> Report:
        async with asyncio.timeout(20):
            while not (self.latest and check(self.latest)):
                await asyncio.sleep(0.05)
        return self.latest

    async def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            await self._process.wait()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def server_process() -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connbalance_sim.server", "--listen", f"{HOST}:0", "--metrics",
        f"{HOST}:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        yield int(json.loads(line)["grpc"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


def _steering_drain(count: int, *, window: float) -> DrainRequest:
    now = datetime.now(UTC)
    return DrainRequest(id=RequestId(f"refusal-{now.timestamp()}"), count=count,
                        window_seconds=window, quiet_millis=50,
                        deadline=now + timedelta(seconds=window + 5), steer=True)


async def _cycle_every_client_into_refusals(refusal: Refusal) -> tuple[Report, Report,
                                                                        ProxyAgent]:
    """Four fail-fast clients behind one proxy; the proxy cycles them all at once and refuses
    their reconnects for a second, so each meets refusals until it ends (the worst case: behind
    a balancer, a reconnect refused by one pod is tried again on a fresh pick)."""
    async with server_process() as port:
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=1.0,
                           registry=CollectorRegistry(), refusal=refusal)
        await agent.start()
        clients = Clients(f"{HOST}:{agent.port}")
        await clients.start()
        try:
            before = await clients.until("every client serving", lambda r: r["streams"] == CLIENTS
                                         and r["calls_ok"] >= 2 * CLIENTS)
            status = await agent.submit(_steering_drain(CLIENTS, window=0.0))
            assert status.reason == ""
            await asyncio.sleep(2.0)
            after = await clients.until("every client back", lambda r: r["streams"] == CLIENTS
                                        and r["stream_breaks"] >= CLIENTS)
            return before, after, agent
        finally:
            await clients.stop()
            await agent.stop()


def test_a_goaway_refusal_costs_fail_fast_grpcio_clients_no_backoff():
    """The fail-fast clients retry nothing (transparent retries off, see connbalance_sim.clients):
    a call made while its channel connects into a GOAWAY fails, but the channel never backs
    off, so it is serving again as soon as a dial gets through."""
    before, after, agent = run(_cycle_every_client_into_refusals("auto"))
    assert agent.cycled_total == CLIENTS
    assert agent.refused_total > 0
    # Every refusal went to an HTTP/2 client, so every one was a GOAWAY.
    assert agent.refused_by_goaway_total == agent.refused_total
    assert after["calls_ok"] > before["calls_ok"]
    # No connect failed: the channels never entered TRANSIENT_FAILURE.
    assert after["transient_failures"] == 0
    assert not set(after["failed_by_cause"]) & {"backoff", "refused_connect"}, after


def test_a_reset_refusal_costs_fail_fast_grpcio_clients_the_calls_of_their_backoff():
    before, after, agent = run(_cycle_every_client_into_refusals("reset"))
    assert agent.cycled_total == CLIENTS
    assert agent.refused_total > 0
    assert agent.refused_by_goaway_total == 0
    assert after["transient_failures"] > before["transient_failures"]
    assert after["calls_failed"] > before["calls_failed"]
    assert set(after["failed_by_cause"]) <= {"backoff", "refused_connect"}


async def _refused_raw(payload: bytes, refusal: Refusal = "auto") -> bytes:
    """What a steering proxy (``auto`` unless told) sends a client that opens with
    ``payload``; b"reset" if it reset the connection, b"refused" if the kernel refused the
    connect."""
    async with server_process() as port:
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=1.0,
                           registry=CollectorRegistry(), refusal=refusal)
        await agent.start()
        try:
            agent.refuse_new(5.0)
            try:
                reader, writer = await asyncio.open_connection(HOST, agent.port)
            except ConnectionRefusedError:
                return b"refused"
            writer.write(payload)
            heard = b""
            try:
                async with asyncio.timeout(5):
                    while chunk := await reader.read(100):
                        heard += chunk
            except ConnectionResetError:
                return b"reset"
            finally:
                writer.close()
            return heard
        finally:
            await agent.stop()


def test_an_http2_client_is_told_settings_then_goaway_before_any_stream():
    heard = run(_refused_raw(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
    # SETTINGS (type 4) on stream 0, then GOAWAY (type 7): last stream 0, NO_ERROR; then EOF.
    assert heard[:9] == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert heard[9:18] == b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
    assert heard[18:] == b"\x00" * 8


@pytest.mark.parametrize("opening", [
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", id="tls-client-hello"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http1"),
    pytest.param(b"", id="silent"),
])
def test_a_client_that_does_not_open_with_the_http2_preface_is_reset(opening):
    assert run(_refused_raw(opening)) == b"reset"


def test_by_default_a_steering_proxy_refuses_even_an_http2_clients_connect():
    """GOAWAY is asked for (``refusal="auto"``), never assumed: grpcio clients with retries on
    hung on it (docs/bench.md, Harm to calls). By default the listener is closed instead."""
    refused = _refused_raw(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                           refusal=DEFAULT_REFUSAL)
    assert run(refused) == b"refused"


def test_the_reset_refusal_resets_even_an_http2_client():
    refused = _refused_raw(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                           refusal="reset")
    assert run(refused) == b"reset"


def test_an_unknown_refusal_is_refused_naming_it():
    with pytest.raises(ValueError, match="refusal must be one of connect, reset, auto, not 'drop'"):
        ProxyAgent(listen=(HOST, 0), upstream=(HOST, 1), max_fraction=1.0,
                   refusal="drop")  # type: ignore[arg-type]


def test_the_frame_cursor_is_between_frames_only_after_a_whole_frame_however_it_is_split():
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"  # PING: 9 + 8 bytes
    ack = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # SETTINGS ACK: no payload
    stream = ping + ack + ping
    for cut in range(1, len(stream)):
        cursor = FrameCursor()
        cursor.feed(stream[:cut])
        assert cursor.between_frames == (cut in (17, 26)), cut
        cursor.feed(stream[cut:])
        assert cursor.between_frames
    one_byte_at_a_time = FrameCursor()
    for byte in stream:
        one_byte_at_a_time.feed(bytes([byte]))
    assert one_byte_at_a_time.between_frames


def test_the_drain_goaway_waits_for_the_end_of_the_frame_in_flight_then_the_fin_follows():
    frame = b"\x00\x00\x04\x00\x00\x00\x00\x00\x01" + b"data"  # DATA on stream 1, 4 bytes

    async def scenario() -> tuple[bytes, bytes]:
        rest = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(frame[:11])
                await rest.wait()
                writer.write(frame[11:])
                await reader.read(-1)  # until the proxy closes its side
            finally:
                writer.close()

        server = await asyncio.start_server(upstream, HOST, 0)
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, server.sockets[0].getsockname()[1]),
                           max_fraction=1.0, registry=CollectorRegistry(), h2_drain=True)
        await agent.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, agent.port)
            writer.write(H2_PREFACE)
            first = await reader.readexactly(11)
            closing = asyncio.create_task(agent.close(
                [c.id for c in agent.connections()], graceful=True, quiet_millis=0,
                deadline_seconds=20))
            await asyncio.sleep(0.3)  # the drain is due now, but the frame is not finished
            rest.set()
            after = await reader.read(-1)  # up to the FIN
            writer.close()
            assert await closing == [CloseOutcome.GRACEFUL]
            return first, after
        finally:
            await agent.stop()
            server.close()
            await server.wait_closed()

    first, after = run(scenario())
    assert first == frame[:11]
    # The end of the frame first, then the GOAWAY, then nothing but the FIN.
    assert after == frame[11:] + H2_DRAIN_GOAWAY
