"""``python -m connbalance_sim.refusals``: what each way of refusing a reconnect costs a client.

One grpcio client (fail-fast, or with the pinned retry policy) makes a unary call every 20 ms to
a real simulated server through a gate on loopback. The gate closes the client's connection
gracefully and then refuses its reconnects for ``--window`` seconds, one way or another:

- ``closed-listener``: the proxy agent's default (``refusal="connect"``): its listening socket is
  closed for the window, so the kernel answers the SYN with a reset, as ``kernel-rst`` does;
- ``goaway``: the proxy agent's ``refusal="auto"``: accept, answer the HTTP/2 preface with
  SETTINGS then GOAWAY (last stream 0), close;
- ``accept-reset``: the proxy agent's ``refusal="reset"``: accept, then reset;
- ``kernel-rst``: reset mode's way: an nftables element answers the SYN with a reset;
- ``kernel-drop``: an nftables rule drops the SYN; the client's kernel sends it again later;
- ``pause``: the listener stops accepting; the handshake completes in the kernel's backlog and
  the connection waits there until the window ends.

With one gate every reconnect meets the refusal until the window ends: the worst case of a
client whose redials keep landing on shedding pods. Prints one JSON document: per method and
group, the calls that failed, when the first call succeeded after the close, how many
connections the client made, and whether its channel entered TRANSIENT_FAILURE. ``kernel-*``
need CAP_NET_ADMIN and nft.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from connbalance.agent.proxy import ProxyAgent, Refusal
from connbalance.agent.steering import KernelSteering
from connbalance_sim.clients import FAILFAST, RETRY, StateWatch, channel_options
from connbalance_sim.clients import Counters as ClientCounters
from connbalance_sim.server import PING

METHODS = ("closed-listener", "goaway", "accept-reset", "kernel-rst", "kernel-drop", "pause")
HOST = "127.0.16.1"
CALL_EVERY = 0.02
_DROP_TABLE = "inet connbalance_refusals"


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
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


class _PausingGate:
    """A listener that forwards to the server, and stops accepting while paused."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._listener = socket.create_server((HOST, 0), backlog=128)
        self._listener.setblocking(False)
        self._paused_until = 0.0
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def pause(self, seconds: float) -> None:
        self._paused_until = time.monotonic() + seconds

    def close_all(self) -> None:
        for client, server in self._conns:
            client.close()
            server.close()
        self._conns.clear()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            # Accepted while paused: as if still in the kernel's backlog until the pause ends.
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.accepted += 1
            task = asyncio.create_task(self._forward(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward(self, conn: socket.socket) -> None:
        client_r, client_w = await asyncio.open_connection(sock=conn)
        server_r, server_w = await asyncio.open_connection(HOST, self._upstream)
        self._conns.append((client_w, server_w))
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.close_all()
        self._listener.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)


def _drop_syns(port: int, seconds: float) -> None:
    millis = max(1, int(seconds * 1000))
    _nft(f"add table {_DROP_TABLE}\n"
         f"add set {_DROP_TABLE} drop4 {{ type ipv4_addr . inet_service; flags timeout; }}\n"
         f"add chain {_DROP_TABLE} input {{ type filter hook input priority filter - 20; }}\n"
         f"flush chain {_DROP_TABLE} input\n"
         f"add rule {_DROP_TABLE} input tcp flags & (syn | ack) == syn "
         f"ip daddr . tcp dport @drop4 drop\n"
         f"add element {_DROP_TABLE} drop4 {{ {HOST} . {port} timeout {millis}ms }}\n")


async def _client_run(target: str, *, group: str, close_and_refuse: Any,
                      window: float) -> dict[str, Any]:
    counters = ClientCounters()
    channel = grpc.aio.insecure_channel(target, options=channel_options(backoff_ms=100,
                                                                        group=group))
    watch = StateWatch(channel, counters)
    watching = asyncio.create_task(watch.run())
    ping = channel.unary_unary(PING)
    await ping(b"warm", timeout=10, wait_for_ready=True)
    seen: dict[str, Any] = {"failed": 0, "first_ok": None, "closed_at": None}

    async def calls() -> None:
        while True:
            started = time.monotonic()
            try:
                await ping(b"ping", timeout=window + 5.0)
                closed_at = seen["closed_at"]
                if closed_at is not None and started >= closed_at and seen["first_ok"] is None:
                    seen["first_ok"] = time.monotonic() - closed_at
            except grpc.aio.AioRpcError:
                seen["failed"] += 1
            await asyncio.sleep(CALL_EVERY)

    calling = asyncio.create_task(calls())
    await asyncio.sleep(0.3)

    def closing_now() -> None:
        seen["closed_at"] = time.monotonic()

    await close_and_refuse(closing_now)
    await asyncio.sleep(window + 3.0)
    for task in (calling, watching):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await channel.close()
    first_ok = seen["first_ok"]
    return {"failed_calls": seen["failed"], "first_ok_after_close_s": None if first_ok is None
            else round(first_ok, 3), "transient_failures": counters.transient_failures}


async def measure(method: str, *, group: str, window: float) -> dict[str, Any]:
    async with _server() as port:
        if method == "pause":
            gate = _PausingGate(port)
            serving = asyncio.create_task(gate.serve())

            async def close_pause(closing_now: Callable[[], None]) -> None:
                gate.pause(window)
                closing_now()
                gate.close_all()

            try:
                result = await _client_run(f"{HOST}:{gate.port}", group=group,
                                           close_and_refuse=close_pause, window=window)
                return {**result, "connections": gate.accepted}
            finally:
                serving.cancel()
                gate.stop()
        refusals: dict[str, Refusal] = {"goaway": "auto", "closed-listener": "connect"}
        refusal = refusals.get(method, "reset")
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=1.0,
                           registry=CollectorRegistry(), refusal=refusal,
                           h2_drain=False)
        await agent.start()
        steering = KernelSteering(address=HOST, port=agent.port)
        if method == "kernel-rst":
            steering.prepare()

        async def close_refuse(closing_now: Callable[[], None]) -> None:
            # The refusal first (nft takes a moment), then the close, timed from there.
            if method == "kernel-rst":
                steering.refuse(window)
            elif method == "kernel-drop":
                _drop_syns(agent.port, window)
            else:
                agent.refuse_new(window)
            closing_now()
            await agent.close([c.id for c in agent.connections()], graceful=True,
                              quiet_millis=0, deadline_seconds=5.0)

        try:
            result = await _client_run(f"{HOST}:{agent.port}", group=group,
                                       close_and_refuse=close_refuse, window=window)
            return {**result, "refused_by_proxy": agent.refused_total}
        finally:
            if method == "kernel-rst":
                steering.clear()
            if method == "kernel-drop":
                with contextlib.suppress(subprocess.CalledProcessError):
                    _nft(f"delete table {_DROP_TABLE}\n")
            await agent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connbalance_sim.refusals",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--window", type=float, default=1.0,
                        help="seconds the refusal lasts (default 1)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown[0]}; choose from {', '.join(METHODS)}")
    load_at_start = os.getloadavg()
    results = []
    for method in methods:
        for group in (FAILFAST, RETRY):
            outcome = asyncio.run(measure(method, group=group, window=args.window))
            results.append({"method": method, "group": group, **outcome})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"window_s": args.window, "call_every_s": CALL_EVERY,
                      "load_average": {"start": [round(x, 2) for x in load_at_start],
                                       "end": [round(x, 2) for x in os.getloadavg()]},
                      "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
