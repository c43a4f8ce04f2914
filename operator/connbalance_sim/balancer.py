"""A flow-hash L4 balancer on loopback, the way an NLB or kube-proxy spreads TCP connections.

Each new connection goes to ``ready[hash(client address, client port) % len(ready)]`` and stays
there for its life. A backend enters the ready set once its health check answers and leaves it
after ``unhealthy_after`` failed checks in a row (a check this process was too late to read
counts neither way: ``check_verdict``), or at once when it is deregistered (a pod being
deleted leaves the endpoints first). ``steer_off(name, until=)`` keeps new connections off a
backend until then, unless that would leave none: how the ``steer`` actuation is simulated.

A backend that refuses the dial (a steering agent, in proxy or reset mode) costs the client a
reset, as an NLB's does; with ``redials=N`` the balancer first dials again up to N times, each on
a fresh pick that may land on the same backend, as Teleport's proxy dials the auth Service again
through kube-proxy.

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

from connbalance.agent.h2 import H2_SETTINGS_THEN_GOAWAY

# A kubelet probe's default timeoutSeconds. A backend here either answers a check at once or
# refuses it at once, so only this process's own lateness makes one time out: with thousands of
# clients the loop's turns take a few tenths of a second, and a timeout as short as the check
# interval (0.25 s) took every pod out of service at once.
HEALTH_TIMEOUT = 1.0


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
    # The backend sent more than a refusal: a pod that resets on arrival sends nothing, and a
    # steering proxy's GOAWAY refusal sends only SETTINGS and GOAWAY.
    served: bool = True


@dataclass(slots=True)
class BalancerStats:
    accepted: int = 0
    refused: int = 0  # no ready backend, or a dial the chosen one did not answer
    redialled: int = 0  # refused dials tried again on a fresh pick (redials)
    ends: list[ConnectionEnd] = field(default_factory=list)


class _Pair:
    """A client connection and the backend connection it was given."""

    __slots__ = ("backend", "client", "ended", "heard", "peer", "started", "upstream")

    def __init__(self, *, client: asyncio.Transport, peer: tuple[str, int], backend: Backend,
                 started: float) -> None:
        self.client = client
        self.peer = peer
        self.backend = backend
        self.started = started
        self.upstream: asyncio.Transport | None = None
        self.ended = False
        self.heard = 0  # bytes from the backend

    @property
    def served(self) -> bool:
        return self.heard > len(H2_SETTINGS_THEN_GOAWAY)

    def abort(self) -> None:
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()


class _ClientSide(asyncio.Protocol):
    def __init__(self, balancer: FlowHashBalancer) -> None:
        self._balancer = balancer
        self.pair: _Pair | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # until the backend connection is there to take the bytes
        self.pair = self._balancer._accepted(transport)

    def data_received(self, data: bytes) -> None:
        if self.pair is not None and self.pair.upstream is not None:
            self.pair.upstream.write(data)

    def eof_received(self) -> bool:
        if self.pair is not None:
            self._balancer._ended(self.pair, by_backend=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pair is not None:
            self._balancer._ended(self.pair, by_backend=False)

    def pause_writing(self) -> None:
        if self.pair is not None and self.pair.upstream is not None:
            self.pair.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.pair is not None and self.pair.upstream is not None:
            self.pair.upstream.resume_reading()


class _BackendSide(asyncio.Protocol):
    def __init__(self, balancer: FlowHashBalancer, pair: _Pair) -> None:
        self._balancer = balancer
        self._pair = pair

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._pair.upstream = transport

    def data_received(self, data: bytes) -> None:
        self._pair.heard += len(data)
        self._pair.client.write(data)

    def eof_received(self) -> bool:
        self._balancer._ended(self._pair, by_backend=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._balancer._ended(self._pair, by_backend=True)

    def pause_writing(self) -> None:
        self._pair.client.pause_reading()

    def resume_writing(self) -> None:
        self._pair.client.resume_reading()


class FlowHashBalancer:
    def __init__(self, *, host: str, port: int = 0, seed: int = 0, health_interval: float = 0.25,
                 health_timeout: float = HEALTH_TIMEOUT, unhealthy_after: int = 2,
                 clock: Callable[[], float] = time.time,
                 on_end: Callable[[ConnectionEnd], None] | None = None, redials: int = 0) -> None:
        self._host = host
        self._redials = redials
        self._port = port
        self._salt = str(seed).encode()
        self._interval = health_interval
        self._health_timeout = health_timeout
        self._unhealthy_after = unhealthy_after
        self._clock = clock
        self._on_end = on_end
        self._backends: dict[str, Backend] = {}
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None
        self._pairs: set[_Pair] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._health_listeners: list[Callable[[], None]] = []
        self.stats = BalancerStats()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(self), self._host,
                                                self._port, reuse_address=True, backlog=4096)
        self._checker = asyncio.create_task(self._check_forever())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._server is not None:
            self._server.close()
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        for pair in list(self._pairs):
            pair.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports run connection_lost before the loop ends

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

    def watch_health(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a backend's health check flips it in or out of service,
        as a kubelet's readiness probe changes a pod's Ready condition."""
        self._health_listeners.append(listener)

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

    def choose(self, peer: tuple[str, int], *, attempt: int = 0) -> Backend | None:
        ready = [self._backends[name] for name in self.ready()]
        now = self._clock()
        open_to_new = [b for b in ready if b.steer_until <= now] or ready
        if not open_to_new:
            return None
        flow = f"{peer[0]}:{peer[1]}" + (f"#{attempt}" if attempt else "")
        digest = hashlib.blake2b(flow.encode(), key=self._salt[:64], digest_size=8).digest()
        return open_to_new[int.from_bytes(digest, "big") % len(open_to_new)]

    def _accepted(self, client: asyncio.Transport) -> _Pair | None:
        peer = client.get_extra_info("peername") or ("", 0)
        backend = self.choose((str(peer[0]), int(peer[1])))
        if backend is None:
            self.stats.refused += 1
            client.abort()
            return None
        pair = _Pair(client=client, peer=(str(peer[0]), int(peer[1])), backend=backend,
                     started=self._clock())
        task = asyncio.get_running_loop().create_task(self._connect(pair))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return pair

    async def _connect(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(1 + self._redials):
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: _BackendSide(self, pair), pair.backend.host, pair.backend.port),
                    timeout=1.0)
                break
            except (OSError, TimeoutError):
                self.stats.refused += 1
                again = (self.choose(pair.peer, attempt=attempt + 1)
                         if attempt < self._redials and not pair.client.is_closing() else None)
                if again is None:
                    # As an NLB does before its health check notices: the client sees a reset.
                    pair.ended = True
                    pair.client.abort()
                    return
                self.stats.redialled += 1
                pair.backend = again
        if pair.client.is_closing():
            pair.ended = True
            pair.abort()
            return
        self.stats.accepted += 1
        pair.backend.active += 1
        self._pairs.add(pair)
        pair.client.resume_reading()

    def _ended(self, pair: _Pair, *, by_backend: bool) -> None:
        """The first side to end ends both; the end is reported once."""
        if pair.ended:
            return
        pair.ended = True
        pair.client.close()
        if pair.upstream is not None:
            pair.upstream.close()
        if pair not in self._pairs:
            return
        self._pairs.discard(pair)
        pair.backend.active -= 1
        now = self._clock()
        end = ConnectionEnd(backend=pair.backend.name, at=now,
                            in_service=not pair.backend.retired, closed_by_backend=by_backend,
                            lifetime=now - pair.started, served=pair.served)
        self.stats.ends.append(end)
        if self._on_end is not None:
            self._on_end(end)

    async def _check_forever(self) -> None:
        while True:
            backends = list(self._backends.values())
            results = await asyncio.gather(*(self._check(b) for b in backends))
            flipped = False
            for backend, ok in zip(backends, results, strict=True):
                was = backend.healthy
                if ok is None:
                    continue  # no verdict: the check timed out because this process was late
                if ok:
                    backend.healthy, backend.failures = True, 0
                else:
                    backend.failures += 1
                    if backend.failures >= self._unhealthy_after:
                        backend.healthy = False
                flipped = flipped or backend.healthy != was
            if flipped:
                for listener in self._health_listeners:
                    listener()
            await asyncio.sleep(self._interval)

    async def _check(self, backend: Backend) -> bool | None:
        started = self._clock()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.health_port),
                timeout=self._health_timeout)
        except OSError:
            return False
        except TimeoutError:
            return check_verdict(elapsed=self._clock() - started, timeout=self._health_timeout)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


def check_verdict(*, elapsed: float, timeout: float) -> bool | None:
    """What a health check that timed out says: the backend failed it (False), or nothing (None)
    when it took half as long again as its timeout, because then this process was late to read the
    answer, not the backend late to give it. The balancer shares its event loop with the
    simulated agents and the controller: with thousands of clients a drain can hold that loop
    for seconds, and a probe that counted its own process's stall would take every pod out of
    service at once (a kubelet's probe runs apart from the pods it probes)."""
    return None if elapsed > 1.5 * timeout else False
