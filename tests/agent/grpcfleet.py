"""Real grpcio servers and clients for the agent tests, without protobuf: bytes in, bytes out.

Each client holds its own TCP connection (``grpc.use_local_subchannel_pool``), keeps a bidi
"inventory" stream open the way Teleport agents do, and makes periodic unary calls. It reopens
the stream by itself when the connection goes, counting how often, and counts failed unary calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

import grpc

SERVICE = "connbalance.test.Inventory"
# What a robust gRPC client configures (and the gRPC docs recommend): retry a unary call that
# failed with UNAVAILABLE before any answer came back. An L4 proxy cannot see a call that the
# client has started but not yet written when the FIN goes out (a window of about a millisecond
# on an idle machine, more on a busy one); such a call fails on the old connection and is retried
# on the new one. The Slow method has no retry policy, so calls to it show any failure.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": "Ping"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def _ident(data: bytes) -> bytes:
    return data


class FleetServer:
    """A gRPC server on loopback with one stream method and one unary method."""

    def __init__(self, *, host: str = "127.0.4.1") -> None:
        self.host = host
        self.port = 0
        self.streams_opened = 0
        self.unary_calls = 0
        self.calls_started = 0
        self._server: grpc.aio.Server | None = None

    async def _stream(self, requests, context):
        self.streams_opened += 1
        async for message in requests:
            yield b"ack:" + message

    async def _ping(self, request: bytes, context) -> bytes:
        self.unary_calls += 1
        return b"pong"

    async def _slow(self, request: bytes, context) -> bytes:
        self.calls_started += 1
        await asyncio.sleep(int(request) / 1000.0)
        return b"done"

    async def start(self) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self._stream, request_deserializer=_ident, response_serializer=_ident
                ),
                "Ping": grpc.unary_unary_rpc_method_handler(
                    self._ping, request_deserializer=_ident, response_serializer=_ident
                ),
                "Slow": grpc.unary_unary_rpc_method_handler(
                    self._slow, request_deserializer=_ident, response_serializer=_ident
                ),
            },
        )
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"{self.host}:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)


@dataclass
class FleetClient:
    """One client: its own channel and connection, a held stream, and unary calls every so often."""

    target: str
    name: str
    unary_interval: float | None = 0.5
    chatty_interval: float | None = None
    streams_opened: int = 0
    unary_ok: int = 0
    unary_failed: list[str] = field(default_factory=list)
    stream_ended_at: list[float] = field(default_factory=list)
    unary_failed_at: list[tuple[float, float]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _channel: grpc.aio.Channel | None = None

    @property
    def reconnects(self) -> int:
        return max(0, self.streams_opened - 1)

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
                ("grpc.service_config", RETRY_SERVICE_CONFIG),
            ],
        )
        self._tasks.append(asyncio.create_task(self._hold_stream()))
        if self.unary_interval is not None:
            self._tasks.append(asyncio.create_task(self._unary_loop()))

    async def wait_streaming(self, *, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.streams_opened == 0:
                await asyncio.sleep(0.02)

    async def _hold_stream(self) -> None:
        assert self._channel is not None
        method = self._channel.stream_stream(
            f"/{SERVICE}/Stream", request_serializer=_ident, response_deserializer=_ident
        )
        while not self._stop.is_set():
            call = method(wait_for_ready=True)
            try:
                await call.write(b"hello " + self.name.encode())
                await call.read()
                self.streams_opened += 1
                while not self._stop.is_set():
                    if self.chatty_interval is None:
                        # An idle inventory stream: wait for the server, or the connection, to end.
                        message = await call.read()
                        if message is grpc.aio.EOF:
                            break
                    else:
                        await call.write(b"heartbeat")
                        await call.read()
                        await asyncio.sleep(self.chatty_interval)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the connection went: open the stream again
            finally:
                call.cancel()
                self.stream_ended_at.append(time.monotonic())
            if not self._stop.is_set():
                await asyncio.sleep(0.05)

    async def slow_call(self, millis: int) -> bytes:
        """One call that the server answers after ``millis``; no retry policy covers it."""
        assert self._channel is not None
        slow = self._channel.unary_unary(
            f"/{SERVICE}/Slow", request_serializer=_ident, response_deserializer=_ident
        )
        return bytes(await slow(str(millis).encode(), timeout=30))

    async def _unary_loop(self) -> None:
        assert self._channel is not None
        assert self.unary_interval is not None
        ping = self._channel.unary_unary(
            f"/{SERVICE}/Ping", request_serializer=_ident, response_deserializer=_ident
        )
        rng = random.Random(self.name)
        while not self._stop.is_set():
            await asyncio.sleep(self.unary_interval * (0.5 + rng.random()))
            started = time.monotonic()
            try:
                await ping(b"ping", timeout=10)
                self.unary_ok += 1
            except grpc.aio.AioRpcError as exc:
                self.unary_failed.append(f"{exc.code().name}: {exc.details()}")
                self.unary_failed_at.append((started, time.monotonic()))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            await self._channel.close()


async def start_clients(
    target: str, count: int, *, unary_interval: float | None = 0.5, prefix: str = "client"
) -> list[FleetClient]:
    clients = [
        FleetClient(target=target, name=f"{prefix}-{i}", unary_interval=unary_interval)
        for i in range(count)
    ]
    for client in clients:
        await client.start()
    await asyncio.gather(*(c.wait_streaming() for c in clients))
    return clients


async def stop_clients(clients: list[FleetClient]) -> None:
    await asyncio.gather(*(c.stop() for c in clients))
