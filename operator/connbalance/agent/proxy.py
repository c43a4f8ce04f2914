"""Proxy mode: an asyncio L4 proxy in front of the server port that can close chosen connections.

Each accepted client connection gets its own upstream connection; bytes are copied both ways with
flow control (a full write buffer pauses reading on the other side). A graceful close sends FIN to
both ends once neither direction has carried data for ``quietMillis``, no buffer holds any, and
the server had the last word; at the deadline the connection is closed anyway and counted as
forced. No privileges needed.

With ``h2_drain`` (off by default), on a plaintext HTTP/2 connection (the client opened with
the HTTP/2 preface: gRPC without TLS) the graceful close starts with an HTTP/2 drain: the proxy
writes GOAWAY (last stream 2^31-1, NO_ERROR) to the client between two of the server's frames,
as a server that shuts down does.
The client then starts no new call on the connection and opens a new one for the next, while the
calls in flight finish; the FIN follows ``_DRAIN_GRACE_SECONDS`` later, once quiet as above. Closing
with a FIN alone cannot tell a call whose answer is late from a quiet connection, and such a call
fails, retry policy or not, once its headers have come back. It is off by default because
grpcio 1.85 behaves badly after it: a call made while the drained connection is still open waits,
its channel IDLE, until its deadline (every time, in a test of one client; grpc-go not tried).

While its pod steers, the proxy refuses new client connections. How (``refusal``):

- ``connect`` (the default): the listening socket is closed for the window and opened again
  when it ends, so the kernel answers each new connect with a reset (ECONNREFUSED), as reset
  mode's nftables rule does. Established connections are untouched. A balancer that dials again
  when a dial is refused (Teleport's proxy dialling the auth Service, an HAProxy with redispatch)
  places the client on another pod and the client never knows; one that cannot (an NLB) resets
  the client, which then costs what ``reset`` costs. The refused connects are the kernel's, so
  ``refused_total`` counts none of them.
- ``reset``: each refused connection is accepted and reset on arrival. A balancer in front has
  already connected by then, so it cannot dial another pod; a gRPC client counts the reset as a
  failed connect and waits out its reconnect backoff in TRANSIENT_FAILURE, and fail-fast calls
  made meanwhile fail.
- ``auto``: a client that opens with the HTTP/2 preface (plaintext gRPC) is sent SETTINGS and
  then GOAWAY (last stream 0, NO_ERROR), and the connection is closed once the client closes it.
  gRPC clients (grpcio and grpc-go) take that as a connection that became ready and was then
  shut down gracefully: the channel reconnects at once, with no reconnect backoff. Any other
  client (TLS, which the proxy cannot answer without the server's certificate, or one that says
  nothing for half a second) is reset, as with ``reset``. grpc-go retries a call refused so only
  once without a retry policy, and grpcio 1.85 with its retries on meets it badly (see
  ``DEFAULT_REFUSAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from pathlib import Path
from typing import Final, Literal

from prometheus_client import CollectorRegistry

from connbalance.agent.engine import DrainEngine
from connbalance.agent.h2 import GoawayRefusal, reset
from connbalance.agent.pair import Pair
from connbalance.agent.proxysides import ClientSide, UpstreamSide
from connbalance.agent.selection import ConnectionInfo
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

# Short, so a forced close still flushes what is in flight; after it the socket is aborted (RST).
_FORCED_FLUSH_SECONDS = 1.0
_BACKLOG = 4096
# How often a connection that is busy now is looked at again while waiting for it to go quiet.
_POLL_FLOOR_SECONDS = 0.005

Refusal = Literal["connect", "reset", "auto"]
REFUSALS: Final[tuple[Refusal, ...]] = ("connect", "reset", "auto")
# The default refusal is the refused connect: never worse for a client than the reset, and
# behind a balancer that dials again it costs the client nothing. ``auto`` answers a plaintext
# HTTP/2 client with GOAWAY, which costs grpc-go, and grpcio with retries off, no backoff; but
# grpcio 1.85 clients with retries on (their default) met it with streams that never came back
# and memory growing by hundreds of MB a second (docs/bench.md, Harm to calls), so it is asked
# for, never assumed.
DEFAULT_REFUSAL: Final[Refusal] = "connect"
# From the drain's GOAWAY to the FIN: long enough for a call started just before it to be
# answered, short enough that the FIN comes within the steering that follows a window.
_DRAIN_GRACE_SECONDS = 0.5
# How soon a listener that could not be opened again at the end of a window is tried again.
_RELISTEN_RETRY_SECONDS = 0.1

log = logging.getLogger(__name__)


class ProxyAgent(DrainEngine):
    """The proxy-mode agent. Start it inside a running event loop; see the package docstring."""

    mode = "proxy"

    def __init__(
        self,
        *,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        max_fraction: float,
        state_file: Path | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        refusal: Refusal = DEFAULT_REFUSAL,
        h2_drain: bool = False,
    ) -> None:
        if refusal not in REFUSALS:
            raise ValueError(f"refusal must be one of {', '.join(REFUSALS)}, not {refusal!r}")
        super().__init__(
            max_fraction=max_fraction,
            state_file=state_file,
            rng=rng,
            registry=registry,
            clock=clock,
        )
        self.listen = listen
        self.upstream = upstream
        self._pairs: dict[str, Pair] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self.refusal = refusal
        self.h2_drain = h2_drain
        self.refused_total = 0
        self.refused_by_goaway_total = 0  # of them, answered with GOAWAY (auto, HTTP/2 only)
        self._refuse_until = 0.0
        self._port: int | None = None  # the port bound, kept while the listener is closed
        self._relisten: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy has not started")
        return self._port

    @property
    def listening(self) -> bool:
        """False while a ``connect`` refusal has the listening socket closed."""
        return self._server is not None

    async def start(self) -> None:
        await self._listen(self.listen[1])
        assert self._server is not None
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _listen(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSide(self),
            host=self.listen[0],
            port=port,
            backlog=_BACKLOG,
            reuse_address=True,
        )

    async def stop(self) -> None:
        await self._cancel_requests()
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relisten
            self._relisten = None
        if self._server is not None:
            self._server.close()
        for task in list(self._connecting):
            task.cancel()
        for pair in list(self._pairs.values()):
            pair.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let the transports run their connection_lost callbacks before the loop goes away.
        await asyncio.sleep(0)

    def steer(self, seconds: float) -> None:
        self.refuse_new(seconds)

    def refuse_new(self, seconds: float) -> None:
        """Refuse new client connections for ``seconds`` (steering: reconnects go elsewhere).

        A refused client reconnects (at once after a GOAWAY, after its backoff after a reset),
        which a balancer in front sends to another pod with probability (N-1)/N.
        """
        self._refuse_until = max(self._refuse_until, self.clock.monotonic() + seconds)
        if self.refusal == "connect" and self._server is not None and self._relisten is None:
            self._server.close()
            self._server = None
            log.info("listener closed for %.1fs: the kernel refuses new connects", seconds)
            self._relisten = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        """Open the listener again once the refusal is over (later if it was extended), and
        keep trying if the port cannot be bound: a pod must never be left refusing."""
        assert self._port is not None
        while True:
            wait = self._refuse_until - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
                continue
            try:
                await self._listen(self._port)
            except OSError as exc:
                log.error("cannot listen on port %d again: %s; retrying", self._port, exc)
                await self.clock.sleep(_RELISTEN_RETRY_SECONDS)
                continue
            self._relisten = None
            log.info("listening again on port %d", self._port)
            return

    def connections(self) -> list[ConnectionInfo]:
        now = self.clock.monotonic()
        return [p.info(now) for p in self._pairs.values() if not p.closed]

    def active_count(self) -> int:
        return sum(1 for p in self._pairs.values() if not p.closed)

    def _accept(self, transport: asyncio.Transport, peer: tuple[str, int]) -> Pair | GoawayRefusal:
        now = self.clock.monotonic()
        if now < self._refuse_until:
            self.refused_total += 1
            # One the loop accepted as the listener closed is reset, as ``reset`` does.
            if self.refusal in ("connect", "reset"):
                refused = Pair(conn_id="refused", client=transport, peer=peer, now=now)
                refused.closed = True
                reset(transport)
                return refused
            return GoawayRefusal(transport, on_goaway=self._count_goaway)
        pair = Pair(conn_id=f"c{next(self._ids)}", client=transport, peer=peer, now=now)
        self._pairs[pair.id] = pair
        task = asyncio.get_running_loop().create_task(self._connect_upstream(pair))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return pair

    async def _connect_upstream(self, pair: Pair) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: UpstreamSide(self, pair), host=self.upstream[0], port=self.upstream[1]
            )
        except OSError:
            # The server is down: the client sees a reset and retries, as it would without us.
            pair.abort()
            self._forget(pair)
            return
        if pair.closed:
            pair.abort()
            return
        assert pair.upstream is not None
        if pair.early:
            pair.upstream.write(b"".join(pair.early))
            pair.early.clear()
        if pair.client_eof:
            with contextlib.suppress(OSError, RuntimeError):
                pair.upstream.write_eof()
        pair.client.resume_reading()

    def _count_goaway(self) -> None:
        self.refused_by_goaway_total += 1

    def _forget(self, pair: Pair) -> None:
        if not pair.closed:
            pair.close()
        self._pairs.pop(pair.id, None)

    def _quiet_wait(self, conn_id: str, *, quiet_seconds: float) -> float | None:
        pair = self._pairs.get(conn_id)
        if pair is None or pair.closed:
            return None
        now = self.clock.monotonic()
        if pair.is_h2c and self.h2_drain:
            if pair.drained_at is None:
                # The drain first: no call starts on the connection after the GOAWAY.
                if not pair.drain(now):
                    return _POLL_FLOOR_SECONDS
                return _DRAIN_GRACE_SECONDS
            if now - pair.drained_at < _DRAIN_GRACE_SECONDS:
                return _DRAIN_GRACE_SECONDS - (now - pair.drained_at)
        quiet_for = now - pair.last_activity
        # The server must have had the last word: silence after a request is a server still
        # working on it, and closing then fails that call. Unread bytes are looked for last,
        # since that costs two system calls.
        if (
            quiet_for >= quiet_seconds
            and not pair.client_spoke_last
            and pair.queued() == 0
            and pair.unread() == 0
        ):
            return 0.0
        return max(quiet_seconds - quiet_for, _POLL_FLOOR_SECONDS)

    def _shut(self, conn_id: str, *, graceful: bool) -> bool:
        pair = self._pairs.get(conn_id)
        if pair is None or pair.closed:
            return False
        if graceful:
            pair.finish()
        else:
            pair.close()
            asyncio.get_running_loop().call_later(_FORCED_FLUSH_SECONDS, pair.abort)
        return True
