"""One client connection of the proxy agent and its upstream connection: the two transports,
what each side said last, and the HTTP/2 framing the drain's GOAWAY must fit between."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import termios

from connbalance.agent.h2 import H2_DRAIN_GOAWAY, H2_PREFACE, FrameCursor
from connbalance.agent.selection import ConnectionInfo


class Pair:
    """One client connection and its upstream connection."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "client_eof",
        "client_spoke_last",
        "closed",
        "drained_at",
        "early",
        "frames",
        "id",
        "last_activity",
        "opened_at",
        "peer",
        "preface",
        "upstream",
        "upstream_eof",
    )

    def __init__(
        self, *, conn_id: str, client: asyncio.Transport, peer: tuple[str, int], now: float
    ) -> None:
        self.id = conn_id
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.peer = peer
        self.opened_at = now
        self.last_activity = now
        self.bytes_in = 0
        self.bytes_out = 0
        self.client_eof = False
        self.upstream_eof = False
        self.closed = False
        self.client_spoke_last = False
        self.early: list[bytes] = []
        self.preface = b""  # the client's first bytes, up to the length of the HTTP/2 preface
        self.frames = FrameCursor()  # the server's bytes, read as HTTP/2 frames
        self.drained_at: float | None = None  # when the drain's GOAWAY went to the client

    def note_client_bytes(self, data: bytes) -> None:
        if len(self.preface) < len(H2_PREFACE):
            self.preface += data[: len(H2_PREFACE) - len(self.preface)]

    @property
    def is_h2c(self) -> bool:
        """The client opened with the HTTP/2 preface: plaintext HTTP/2, so gRPC without TLS."""
        return self.preface == H2_PREFACE

    def drain(self, now: float) -> bool:
        """Write the drain's GOAWAY to the client if it can go now: between two frames."""
        if not self.frames.between_frames or self.client.is_closing():
            return False
        self.client.write(H2_DRAIN_GOAWAY)
        self.drained_at = now
        return True

    def queued(self) -> int:
        size = self.client.get_write_buffer_size()
        if self.upstream is not None:
            size += self.upstream.get_write_buffer_size()
        return size

    def unread(self) -> int:
        """Bytes the kernel holds that the event loop has not read yet, on either socket.

        Checked right before a graceful close: a busy loop can lag behind its sockets, and data
        that arrived but was not read means the connection is not quiet (closing then would
        also turn the FIN into a RST).
        """
        return _pending(self.client) + (_pending(self.upstream) if self.upstream else 0)

    def info(self, now: float) -> ConnectionInfo:
        return ConnectionInfo(
            id=self.id,
            peer=self.peer,
            opened_at=self.opened_at,
            last_activity=self.last_activity,
            idle_seconds=max(0.0, now - self.last_activity),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            queued=self.queued(),
            client_spoke_last=self.client_spoke_last,
        )

    def close(self) -> None:
        self.closed = True
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    def finish(self) -> None:
        """The graceful close: FIN to the client at once, then close both sockets.

        The FIN goes out now (a direct shutdown, the write buffer being empty) rather than on
        the loop's next turn: every moment between deciding and the FIN is one in which the
        client may start a call on a connection that is going away.
        """
        sock = self.client.get_extra_info("socket")
        if sock is not None:
            # Through a plain socket object on the same descriptor: uvloop's socket stand-in
            # has no shutdown().
            with contextlib.suppress(OSError, ValueError):
                raw = socket.socket(fileno=sock.fileno())
                try:
                    raw.shutdown(socket.SHUT_WR)
                finally:
                    raw.detach()
        self.close()

    def abort(self) -> None:
        self.closed = True
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()


def _pending(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except (OSError, ValueError):
        return 0
    return int(buf[0])
