"""The bits of HTTP/2 the proxy agent speaks: it never parses a request, only enough framing to
refuse a plaintext gRPC client without costing it a backoff and to drain a connection gracefully.

- ``GoawayRefusal``: a refused connection whose client opened with the HTTP/2 preface is told
  SETTINGS then GOAWAY (last stream 0, NO_ERROR), which gRPC takes as a graceful close and redials
  at once; any other client (TLS, HTTP/1, silence) is reset.
- ``FrameCursor``: where the server's bytes stand in HTTP/2 framing, so that the drain's GOAWAY
  (last stream 2^31-1) goes to the client between two frames, never inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# An empty SETTINGS frame, then GOAWAY with last-stream-id 0 and NO_ERROR: "ready, and going
# away before any stream", which gRPC answers by reconnecting without backoff.
H2_SETTINGS_THEN_GOAWAY: Final = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
    + b"\x00\x00\x00\x00"
    + b"\x00\x00\x00\x00"
)
# GOAWAY, last stream 2^31-1, NO_ERROR: "no new streams here", the first step of a graceful
# HTTP/2 shutdown. The client lets its calls in flight finish and opens a new connection.
H2_DRAIN_GOAWAY: Final = (
    b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x7f\xff\xff\xff" + b"\x00\x00\x00\x00"
)
_H2_FRAME_HEADER = 9
# A refused client that has not sent the HTTP/2 preface by then is reset; one that got GOAWAY
# and has not closed by then is reset too.
_PREFACE_WAIT_SECONDS = 0.5
_GOAWAY_LINGER_SECONDS = 2.0
# How long the GOAWAY waits after the preface. gRPC reconnects after a GOAWAY at once, so a client
# that keeps landing on refusing pods would otherwise redial hundreds of times a second; its calls
# wait meanwhile (a channel that is connecting fails no fail-fast call), so this costs a refused
# client about 50 ms per refusal and bounds its redials to about 20 a second.
_GOAWAY_HOLD_SECONDS = 0.05


class FrameCursor:
    """Where the server's bytes stand in HTTP/2 framing: between two frames or inside one.

    Only the 9-byte frame headers are read (the payload length in their first three bytes), so
    that a GOAWAY can be written to the client between two frames and never inside one.
    """

    __slots__ = ("_header", "_left")

    def __init__(self) -> None:
        self._header = b""
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size:
            if self._left > 0:
                step = min(self._left, size - at)
                self._left -= step
                at += step
                continue
            take = _H2_FRAME_HEADER - len(self._header)
            self._header += data[at : at + take]
            at += take
            if len(self._header) == _H2_FRAME_HEADER:
                self._left = int.from_bytes(self._header[:3], "big")
                self._header = b""

    @property
    def between_frames(self) -> bool:
        return self._left == 0 and not self._header


def reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: the client gets RST rather than a FIN it might read as a served close.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    transport.abort()


class GoawayRefusal:
    """A refused connection under ``auto``: GOAWAY to an HTTP/2 client, a reset to any other."""

    __slots__ = ("_heard", "_on_goaway", "_timer", "answered", "transport")

    def __init__(self, transport: asyncio.Transport, *, on_goaway: Callable[[], None]) -> None:
        self.transport = transport
        self._on_goaway = on_goaway
        self._heard = b""
        self.answered = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(_PREFACE_WAIT_SECONDS, self._give_up)
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # the client's preface and SETTINGS: read and dropped until it closes
        self._heard += data
        wanted = len(H2_PREFACE)
        if self._heard[:wanted] != H2_PREFACE[: len(self._heard)]:
            self._timer.cancel()
            reset(self.transport)
            return
        if len(self._heard) >= wanted:
            self.answered = True
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(_GOAWAY_HOLD_SECONDS, self._go_away)

    def _go_away(self) -> None:
        if self.transport.is_closing():
            return
        self._on_goaway()
        self.transport.write(H2_SETTINGS_THEN_GOAWAY)
        with contextlib.suppress(OSError, RuntimeError):
            self.transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_GOAWAY_LINGER_SECONDS, self._give_up)

    def eof_received(self) -> bool:
        self._timer.cancel()
        self.transport.close()
        return False

    def connection_lost(self) -> None:
        self._timer.cancel()

    def _give_up(self) -> None:
        reset(self.transport)
