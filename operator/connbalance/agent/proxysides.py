"""The two halves of a proxied connection: the client's side and the upstream's, each an asyncio
protocol that hands what it reads to the other side's transport, with flow control both ways."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, cast

from connbalance.agent.h2 import GoawayRefusal
from connbalance.agent.pair import Pair

if TYPE_CHECKING:
    from connbalance.agent.proxy import ProxyAgent


class UpstreamSide(asyncio.Protocol):
    # Slots, not a dict: two protocols per proxied connection, 20,000 connections per agent.
    __slots__ = ("_agent", "_pair")

    def __init__(self, agent: ProxyAgent, pair: Pair) -> None:
        self._agent = agent
        self._pair = pair

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._pair.upstream = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        pair = self._pair
        if pair.closed:
            return
        pair.last_activity = self._agent.clock.monotonic()
        pair.client_spoke_last = False
        pair.bytes_out += len(data)
        pair.frames.feed(data)
        pair.client.write(data)

    def eof_received(self) -> bool:
        pair = self._pair
        pair.upstream_eof = True
        if pair.client_eof or pair.closed:
            return False
        with contextlib.suppress(OSError, RuntimeError):
            pair.client.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._agent._forget(self._pair)

    def pause_writing(self) -> None:
        self._pair.client.pause_reading()

    def resume_writing(self) -> None:
        self._pair.client.resume_reading()


class ClientSide(asyncio.Protocol):
    __slots__ = ("_agent", "_pair", "_refusal")

    def __init__(self, agent: ProxyAgent) -> None:
        self._agent = agent
        self._pair: Pair | None = None
        self._refusal: GoawayRefusal | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername") or ("", 0)
        # Nothing is read until the upstream connection is there to take it.
        transport.pause_reading()
        accepted = self._agent._accept(transport, (str(peername[0]), int(peername[1])))
        if isinstance(accepted, GoawayRefusal):
            self._refusal = accepted
        else:
            self._pair = accepted

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            self._refusal.data_received(data)
            return
        pair = self._pair
        assert pair is not None
        if pair.closed:
            return  # a late request on a connection being closed: the client will resend it
        pair.last_activity = self._agent.clock.monotonic()
        pair.client_spoke_last = True
        pair.bytes_in += len(data)
        pair.note_client_bytes(data)
        if pair.upstream is None:
            # Reading is paused until the upstream is there, but uvloop may still hand over
            # what it had read in the same turn.
            pair.early.append(data)
            return
        pair.upstream.write(data)

    def eof_received(self) -> bool:
        if self._refusal is not None:
            return self._refusal.eof_received()
        pair = self._pair
        assert pair is not None
        pair.client_eof = True
        if pair.upstream_eof or pair.closed:
            return False
        if pair.upstream is not None:
            with contextlib.suppress(OSError, RuntimeError):
                pair.upstream.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refusal is not None:
            self._refusal.connection_lost()
        if self._pair is not None:
            self._agent._forget(self._pair)

    def pause_writing(self) -> None:
        if self._pair is not None and self._pair.upstream is not None:
            self._pair.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._pair is not None and self._pair.upstream is not None:
            self._pair.upstream.resume_reading()


__all__ = ["ClientSide", "UpstreamSide"]
