"""A real proxy-mode agent with clients connected through it, and its HTTP server, on loopback.

The fuzz tests post to the HTTP server; if anything they send reached the engine as a request,
the connections are there to be cycled, so "nothing cycled" means something.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.agent.engine import AgentStatus
from tests.fuzz.loopthread import LoopThread

HOST = "127.0.12.1"
TOKEN = "fuzz-token-3f2a9c1e"
CLIENTS = 8


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class AgentRig:
    loop: LoopThread
    agent: ProxyAgent
    http: AgentServer
    upstream: asyncio.Server
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]

    @property
    def port(self) -> int:
        return self.http.port

    def __repr__(self) -> str:
        return f"AgentRig(port={self.port})"

    def status(self) -> AgentStatus:
        async def read() -> AgentStatus:
            return self.agent.status()

        return self.loop.call(read())

    def metrics(self) -> str:
        async def read() -> str:
            return self.agent.metrics.render().decode()

        return self.loop.call(read())

    def stop(self) -> None:
        async def stop() -> None:
            for _, writer in self.clients:
                writer.close()
            await self.http.stop()
            await self.agent.stop()
            self.upstream.close()

        self.loop.call(stop())
        self.loop.close()


def start_rig(*, max_fraction: float = 1.0, tls: ssl.SSLContext | None = None) -> AgentRig:
    loop = LoopThread()

    async def start() -> AgentRig:
        upstream = await asyncio.get_running_loop().create_server(_Echo, HOST, 0)
        port = upstream.sockets[0].getsockname()[1]
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=max_fraction)
        await agent.start()
        http = AgentServer(agent, host=HOST, port=0, token=TOKEN, ssl_context=tls)
        await http.start()
        clients = [await asyncio.open_connection(HOST, agent.port) for _ in range(CLIENTS)]
        async with asyncio.timeout(10):
            while agent.active_count() < CLIENTS:
                await asyncio.sleep(0.02)
        return AgentRig(loop=loop, agent=agent, http=http, upstream=upstream, clients=clients)

    return loop.call(start())
