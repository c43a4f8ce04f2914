"""One simulated server: a real grpcio server holding long-lived bidi streams.

Run as a process (``python -m connbalance_sim.server --listen HOST:PORT --metrics HOST:PORT``) so a
restart is a real process exit, as a pod's is. Once serving it prints one JSON line with the bound
ports, then runs until SIGTERM or SIGINT, and stops with a short grace.

Metrics, on their own address and registry: ``teleport_connected_resources{type="node"}`` = the
streams open now (what Teleport reports per auth pod), and ``process_open_fds``.

Every answer carries the server's ``--name`` (default: its gRPC address) in the initial metadata
``connbalance-server``, so that a client behind a balancer can say which server it is on. The
messages are raw bytes, echoed: there is no .proto, and any client may send what it likes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import grpc
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server

SERVICE = "connbalance.sim.Fleet"
HOLD = f"/{SERVICE}/Hold"
PING = f"/{SERVICE}/Ping"
SERVER_HEADER = "connbalance-server"


class Streams:
    """The open streams, exported as the gauge Teleport exports for its connected agents."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauge = Gauge(
            "teleport_connected_resources",
            "Connected resources by type (here: open client streams).",
            ["type"],
            registry=registry,
        ).labels(type="node")
        self.open = 0

    def change(self, delta: int) -> None:
        self.open += delta
        self._gauge.set(self.open)


def _handlers(streams: Streams, name: Callable[[], str]) -> grpc.GenericRpcHandler:
    async def hold(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> (
        AsyncIterator[bytes]
    ):
        streams.change(+1)
        try:
            await context.send_initial_metadata(((SERVER_HEADER, name()),))
            async for message in requests:
                yield message
        finally:
            streams.change(-1)

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.send_initial_metadata(((SERVER_HEADER, name()),))
        return request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Hold": grpc.stream_stream_rpc_method_handler(hold),
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
        },
    )


def split_address(text: str, *, default_host: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or default_host), int(port)


async def serve(*, listen: tuple[str, int], metrics: tuple[str, int], grace: float,
                name: str | None = None) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    streams = Streams(registry)
    http_server, _ = start_http_server(metrics[1], addr=metrics[0], registry=registry)
    # so_reuseport off: a restarted server must never share a port with a dying one.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    bound: list[str] = []  # the address, known once bound, before the first call is served
    server.add_generic_rpc_handlers((_handlers(streams, lambda: name or bound[0]),))
    port = server.add_insecure_port(f"{listen[0]}:{listen[1]}")
    bound.append(f"{listen[0]}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = {"grpc": port, "metrics": http_server.server_port, "pid": os.getpid()}
    print(json.dumps(ready), flush=True)
    await stop.wait()
    await server.stop(grace)
    http_server.shutdown()


def main(argv: list[str] | None = None) -> int:
    host = os.environ.get("POD_IP", "127.0.0.1")
    parser = argparse.ArgumentParser(prog="python -m connbalance_sim.server", description=__doc__)
    parser.add_argument("--listen", default=f"{host}:0", help="gRPC HOST:PORT (port 0: any)")
    parser.add_argument("--metrics", default=f"{host}:0", help="metrics HOST:PORT (port 0: any)")
    parser.add_argument("--grace", type=float, default=0.5, help="seconds to finish on stop")
    parser.add_argument("--name", default=None,
                        help=f"what the {SERVER_HEADER} metadata says (default: HOST:PORT)")
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            listen=split_address(args.listen, default_host=host),
            metrics=split_address(args.metrics, default_host=host),
            grace=args.grace,
            name=args.name,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
