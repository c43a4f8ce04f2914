"""The upstream for the agent benchmark: an echo port and a sink port, on uvloop.

``python -m tests.agent.benchserver HOST`` prints ``ECHO_PORT SINK_PORT`` and serves until
stdin closes. The sink reads until EOF, then answers with the byte count and closes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.count += len(data)

    def eof_received(self) -> bool:
        self.transport.write(f"{self.count}\n".encode())
        self.transport.close()
        return True


async def main(host: str) -> None:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, host, 0, backlog=4096)
    sink = await loop.create_server(Sink, host, 0, backlog=4096)
    ports = (echo.sockets[0].getsockname()[1], sink.sockets[0].getsockname()[1])
    print(*ports, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    echo.close()
    sink.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
