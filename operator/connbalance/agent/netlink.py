"""Raw sock_diag netlink: list TCP sockets with their tcp_info, and destroy one (SOCK_DESTROY).

Small enough to own (a request struct, a reply parser, a bytecode port filter) and faster than
going through pyroute2 or spawning ``ss``: see docs/agent-bench.md. Linux only; destroying needs
CAP_NET_ADMIN and a kernel built with CONFIG_INET_DIAG_DESTROY.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from typing import NamedTuple

from connbalance.agent.diagreply import (
    _NLMSGHDR,
    _RTATTR,
    INET_DIAG_INFO,
    NLMSG_DONE,
    NLMSG_ERROR,
    ROW_BYTES_RECEIVED,
    ROW_BYTES_SENT,
    ROW_COOKIE,
    ROW_DPORT,
    ROW_DST,
    ROW_FAMILY,
    ROW_INODE,
    ROW_INTERFACE,
    ROW_LAST_RECEIVED_MS,
    ROW_LAST_SENT_MS,
    ROW_RECV_QUEUE,
    ROW_SEND_QUEUE,
    ROW_SPORT,
    ROW_SRC,
    DumpChunk,
    DumpPart,
    NetlinkError,
    SocketRow,
    _uniform_chunk,
    _uniform_rows,
    _walk,
    rows_of,
)

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # the older inet_diag request: one walk lists both families
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_COND = 7
INET_DIAG_BC_S_EQ = 11
TCP_ESTABLISHED = 1

# family, protocol, ext, pad, states; then the socket id: ports (big endian), addresses,
# interface, cookie.
_REQ = struct.Struct("=BBBxI")
# The older request (struct inet_diag_req): family, two address lengths, ext; the socket id;
# then states and a field no longer used.
_COMPAT_REQ = struct.Struct("=BBBB")
_COMPAT_TAIL = struct.Struct("=II")
_SOCKID = struct.Struct(">HH16s16s")
_SOCKID_TAIL = struct.Struct("=I8s")
_RECV_BUFFER = 1 << 20


class TcpSocket(NamedTuple):
    """One TCP socket from inet_diag, with the fields that identify it for SOCK_DESTROY.

    A NamedTuple rather than the house frozen dataclass: a scan builds one per socket, ten
    thousand at a time, and a frozen dataclass costs several times more to construct.
    """

    family: int
    src: bytes
    sport: int
    dst: bytes
    dport: int
    cookie: bytes
    interface: int
    recv_queue: int
    send_queue: int
    last_sent_ms: int
    last_received_ms: int
    bytes_sent: int
    bytes_received: int
    inode: int

    @property
    def local(self) -> tuple[str, int]:
        return _unpack_address(self.family, self.src), self.sport

    @property
    def remote(self) -> tuple[str, int]:
        return _unpack_address(self.family, self.dst), self.dport

    @property
    def idle_ms(self) -> int:
        return min(self.last_sent_ms, self.last_received_ms)

    @property
    def peer_spoke_last(self) -> bool:
        """The last data came from the peer: for a server socket, a request not answered yet."""
        return self.last_received_ms < self.last_sent_ms

    @property
    def key(self) -> str:
        """Stable for the socket's life and never reused: the kernel's cookie for it."""
        return self.cookie.hex()

    @classmethod
    def from_row(cls, row: SocketRow) -> TcpSocket:
        return cls(
            row[ROW_FAMILY],
            row[ROW_SRC],
            socket.ntohs(row[ROW_SPORT]),
            row[ROW_DST],
            socket.ntohs(row[ROW_DPORT]),
            row[ROW_COOKIE],
            row[ROW_INTERFACE],
            row[ROW_RECV_QUEUE],
            row[ROW_SEND_QUEUE],
            row[ROW_LAST_SENT_MS],
            row[ROW_LAST_RECEIVED_MS],
            row[ROW_BYTES_SENT],
            row[ROW_BYTES_RECEIVED],
            row[ROW_INODE],
        )


def _unpack_address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[:4])
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _local_condition(port: int, address: str | None) -> bytes:
    """The kernel bytecode that keeps only sockets on ``port`` (and at ``address``) in a dump.

    With an address, one host condition carries both (as ss builds "src ADDR:PORT"). An IPv4
    condition also matches v4-mapped addresses of IPv6 sockets: the kernel compares their last
    four bytes. Each op: match -> jump to the end (accept), else past it (reject).
    """
    if address is None:
        ops = struct.pack("=BBH", INET_DIAG_BC_S_EQ, 8, 12) + struct.pack("=BBH", 0, 0, port)
    else:
        parsed = ipaddress.ip_address(address)
        family = socket.AF_INET if parsed.version == 4 else socket.AF_INET6
        raw = parsed.packed
        size = 4 + 8 + len(raw)
        ops = struct.pack("=BBH", INET_DIAG_BC_S_COND, size, size + 4)
        ops += struct.pack("=BBxxi", family, 8 * len(raw), port) + raw
    return _RTATTR.pack(_RTATTR.size + len(ops), INET_DIAG_REQ_BYTECODE) + ops


class SockDiag:
    """A sock_diag netlink socket. Blocking calls, on the event loop's thread without an
    executor: a dump of 100,000 sockets takes about a tenth of a second (docs/agent-bench.md)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)
        self._one_walk = True

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def established(self, *, port: int, address: str | None = None) -> list[TcpSocket]:
        """Established TCP sockets whose local port is ``port``, IPv4 and IPv6 (v4-mapped too);
        with ``address``, only those whose local address it is."""
        return [
            TcpSocket.from_row(row) for row in self.established_rows(port=port, address=address)
        ]

    def established_rows(self, *, port: int, address: str | None = None) -> list[SocketRow]:
        """The same sockets as ``established``, as rows (``SocketRow``): the cheap form."""
        return rows_of(self.established_parts(port=port, address=address))

    def established_parts(self, *, port: int, address: str | None = None) -> list[DumpPart]:
        """The same sockets again, as the dump delivered them (``DumpPart``): the cheapest."""
        return self._dump(_local_condition(port, address), with_info=True)

    def count_established(self, *, port: int, address: str | None = None) -> int:
        """How many ``established`` would list, without tcp_info."""
        return sum(map(len, self._dump(_local_condition(port, address), with_info=False)))

    def _dump(self, condition: bytes, *, with_info: bool) -> list[DumpPart]:
        """Both families' sockets that pass ``condition``: in one walk of the kernel's table
        through the older request, or, where a kernel refuses that, one walk per family."""
        ext = 1 << (INET_DIAG_INFO - 1) if with_info else 0
        states = 1 << TCP_ESTABLISHED
        sockid = _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16) + _SOCKID_TAIL.pack(0, b"\0" * 8)
        if self._one_walk:
            payload = (
                _COMPAT_REQ.pack(socket.AF_UNSPEC, 0, 0, ext)
                + sockid
                + _COMPAT_TAIL.pack(states, 0)
                + condition
            )
            try:
                return self._receive_dump(TCPDIAG_GETSOCK, payload, with_info=with_info)
            except NetlinkError:
                self._one_walk = False
        found: list[DumpPart] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            payload = _REQ.pack(family, socket.IPPROTO_TCP, ext, states) + sockid + condition
            found += self._receive_dump(SOCK_DIAG_BY_FAMILY, payload, with_info=with_info)
        return found

    def _receive_dump(self, kind: int, payload: bytes, *, with_info: bool) -> list[DumpPart]:
        seq = next(self._seq)
        self._send(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, payload)
        found: list[DumpPart] = []
        while True:
            data = self._sock.recv(_RECV_BUFFER)
            chunk = _uniform_chunk(data, kind, seq, with_info=with_info)
            if chunk is not None:
                found.append(chunk)
                continue
            walked: list[SocketRow] = []
            done = _walk(data, kind, seq, walked, with_info=with_info)
            if walked:
                found.append(walked)
            if done:
                return found

    def destroy(self, target: TcpSocket) -> bool:
        """Destroy one socket (both ends see a reset). False when it is already gone."""
        payload = (
            _REQ.pack(target.family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
            + _SOCKID.pack(target.sport, target.dport, target.src, target.dst)
            + _SOCKID_TAIL.pack(target.interface, target.cookie)
        )
        seq = next(self._seq)
        self._send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, payload)
        while True:
            data = self._sock.recv(65536)
            _length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, 0)
            if msg_seq != seq or kind != NLMSG_ERROR:
                continue
            (code,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
            if code == 0:
                return True
            if -code == errno.ENOENT:
                return False
            raise NetlinkError(-code, f"SOCK_DESTROY: {os.strerror(-code)}")

    def _send(self, kind: int, flags: int, seq: int, payload: bytes) -> None:
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags, seq, 0)
        self._sock.sendto(header + payload, (0, 0))


__all__ = [
    "INET_DIAG_INFO", "NLMSG_DONE", "NLMSG_ERROR", "ROW_BYTES_RECEIVED", "ROW_BYTES_SENT",
    "ROW_COOKIE", "ROW_DPORT", "ROW_DST", "ROW_FAMILY", "ROW_INODE", "ROW_INTERFACE",
    "ROW_LAST_RECEIVED_MS", "ROW_LAST_SENT_MS", "ROW_RECV_QUEUE", "ROW_SEND_QUEUE", "ROW_SPORT",
    "ROW_SRC", "DumpChunk", "DumpPart", "NetlinkError", "SockDiag", "SocketRow", "TcpSocket",
    "_uniform_rows", "rows_of",
]  # fmt: skip
