"""A flow-hash L4 balancer on loopback, the way an NLB or kube-proxy spreads TCP connections.

Each new connection goes to ``ready[hash(client address, client port) % len(ready)]`` and stays
there for its life. A backend enters the ready set once its health check answers and leaves it
after ``unhealthy_after`` failed checks in a row, or at once when it is deregistered (a pod being
deleted leaves the endpoints first). ``steer_off(name, until=)`` keeps new connections off a
backend until then, unless that would leave none: how the ``steer`` actuation is simulated.

Every ended connection is reported to ``on_end`` with whether its backend was still in service,
so that connections cycled on purpose are counted apart from those a restart broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BUFFER = 65536


@dataclass(slots=True, eq=False)
class Backend:
    """One registered incarnation of a backend (a new pod behind the same name is a new one)."""

    name: str
    host: str
    port: int
    health_port: int
    healthy: bool = False
    retired: bool = False  # deregistered: its connections end because the pod goes away
    failures: int = 0
    steer_until: float = 0.0
    active: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionEnd:
    backend: str
    at: float
    in_service: bool  # the backend was still registered: a deliberate close, not a restart
    closed_by_backend: bool
    lifetime: float


@dataclass(slots=True)
class BalancerStats:
    accepted: int = 0
    refused: int = 0  # no ready backend, or the chosen one did not answer
    ends: list[ConnectionEnd] = field(default_factory=list)


class FlowHashBalancer:
    def __init__(self, *, host: str, port: int = 0, seed: int = 0, health_interval: float = 0.25,
                 unhealthy_after: int = 2, clock: Callable[[], float] = time.time,
                 on_end: Callable[[ConnectionEnd], None] | None = None) -> None:
        self._host = host
        self._port = port
        self._salt = str(seed).encode()
        self._interval = health_interval
        self._unhealthy_after = unhealthy_after
        self._clock = clock
        self._on_end = on_end
        self._backends: dict[str, Backend] = {}
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.stats = BalancerStats()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port,
                                                  reuse_address=True)
        self._checker = asyncio.create_task(self._check_forever())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def register(self, *, name: str, host: str, port: int, health_port: int) -> None:
        """Put a new incarnation of a backend behind ``name``; it serves once it checks healthy."""
        old = self._backends.get(name)
        if old is not None:
            old.retired = True
        self._backends[name] = Backend(name=name, host=host, port=port, health_port=health_port)

    def deregister(self, name: str) -> None:
        backend = self._backends.pop(name, None)
        if backend is not None:
            backend.retired = True

    def steer_off(self, name: str, *, until: float) -> None:
        backend = self._backends.get(name)
        if backend is not None:
            backend.steer_until = max(backend.steer_until, until)

    def ready(self) -> list[str]:
        return sorted(b.name for b in self._backends.values() if b.healthy and not b.retired)

    def is_ready(self, name: str) -> bool:
        backend = self._backends.get(name)
        return backend is not None and backend.healthy

    def steered(self) -> list[str]:
        now = self._clock()
        return sorted(b.name for b in self._backends.values() if b.steer_until > now)

    def choose(self, peer: tuple[str, int]) -> Backend | None:
        ready = [self._backends[name] for name in self.ready()]
        now = self._clock()
        open_to_new = [b for b in ready if b.steer_until <= now] or ready
        if not open_to_new:
            return None
        digest = hashlib.blake2b(f"{peer[0]}:{peer[1]}".encode(), key=self._salt[:64],
                                 digest_size=8).digest()
        return open_to_new[int.from_bytes(digest, "big") % len(open_to_new)]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._pipes.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.choose(writer.get_extra_info("peername")[:2])
        if backend is None:
            self.stats.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port), timeout=1.0)
        except (OSError, TimeoutError):
            self.stats.refused += 1
            writer.close()
            return
        self.stats.accepted += 1
        backend.active += 1
        started = self._clock()
        to_backend = asyncio.create_task(_pump(reader, up_writer))
        to_client = asyncio.create_task(_pump(up_reader, writer))
        done: set[asyncio.Task[None]] = set()
        try:
            done, _ = await asyncio.wait([to_backend, to_client],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed_by_backend = to_client in done
            for task in (to_backend, to_client):
                task.cancel()
            await asyncio.gather(to_backend, to_client, return_exceptions=True)
            for side in (writer, up_writer):
                side.close()
            backend.active -= 1
            end = ConnectionEnd(backend=backend.name, at=self._clock(),
                                in_service=not backend.retired,
                                closed_by_backend=closed_by_backend,
                                lifetime=self._clock() - started)
            self.stats.ends.append(end)
            if self._on_end is not None:
                self._on_end(end)

    async def _check_forever(self) -> None:
        while True:
            backends = list(self._backends.values())
            results = await asyncio.gather(*(self._check(b) for b in backends))
            for backend, ok in zip(backends, results, strict=True):
                if ok:
                    backend.healthy, backend.failures = True, 0
                else:
                    backend.failures += 1
                    if backend.failures >= self._unhealthy_after:
                        backend.healthy = False
            await asyncio.sleep(self._interval)

    async def _check(self, backend: Backend) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.health_port),
                timeout=self._interval)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            data = await reader.read(BUFFER)
            if not data:
                return
            writer.write(data)
            await writer.drain()
