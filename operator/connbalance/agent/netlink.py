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

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
TCP_ESTABLISHED = 1

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
# family, protocol, ext, pad, states; then the socket id: ports (big endian), addresses,
# interface, cookie.
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")
_SOCKID_TAIL = struct.Struct("=I8s")
# inet_diag_msg in one go (a scan parses ten thousand): family, 3 skipped, the socket id (ports in
# network order), expires skipped, queues, uid skipped, inode.
_MSG = struct.Struct("=B3xHH16s16sI8s4xII4xI")
_SRC_AT = 8  # where the local address starts in inet_diag_msg
# tcp_info from byte 44: last_data_sent, last_ack_sent, last_data_recv (milliseconds ago), then
# bytes_acked and bytes_received at 120 and 128.
_TCPI = struct.Struct("=III64xQQ")
_TCPI_OFFSET = 44
_RECV_BUFFER = 1 << 20


class NetlinkError(OSError):
    """The kernel refused a sock_diag request."""


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


def _unpack_address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[:4])
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _raw_local(family: int, address: str) -> bytes:
    """How ``address`` appears as a local address in a dump of ``family`` (the leading bytes
    of the 16-byte field), or b"" when no socket of that family can have it."""
    parsed = ipaddress.ip_address(address)
    if family == socket.AF_INET:
        return parsed.packed if parsed.version == 4 else b""
    if parsed.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + parsed.packed).packed
    return parsed.packed


def _port_filter(port: int) -> bytes:
    # As ss builds "sport = :PORT": match -> jump to the end (accept), else jump past it (reject).
    ops = struct.pack("=BBH", INET_DIAG_BC_S_EQ, 8, 12) + struct.pack("=BBH", 0, 0, port)
    return _RTATTR.pack(_RTATTR.size + len(ops), INET_DIAG_REQ_BYTECODE) + ops


class SockDiag:
    """A sock_diag netlink socket. Blocking calls; each takes well under a millisecond per
    thousand sockets, so they run on the event loop's thread without an executor."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def established(self, *, port: int, address: str | None = None) -> list[TcpSocket]:
        """Established TCP sockets whose local port is ``port``, IPv4 and IPv6 (v4-mapped too);
        with ``address``, only those whose local address it is."""
        found: list[TcpSocket] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            local = None if address is None else _raw_local(family, address)
            if local != b"":
                found.extend(self._dump(family=family, port=port, local=local))
        return found

    def _dump(self, *, family: int, port: int, local: bytes | None) -> list[TcpSocket]:
        payload = (
            _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 1 << TCP_ESTABLISHED)
            + _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
            + _SOCKID_TAIL.pack(0, b"\0" * 8)
            + _port_filter(port)
        )
        seq = next(self._seq)
        self._send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, payload)
        found: list[TcpSocket] = []
        while True:
            data = self._sock.recv(_RECV_BUFFER)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise NetlinkError(errno.EPROTO, "truncated netlink message")
                body = offset + _NLMSGHDR.size
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, body)
                        raise NetlinkError(-code, f"inet_diag dump: {os.strerror(-code)}")
                    if kind == SOCK_DIAG_BY_FAMILY and (
                        local is None or data[body + _SRC_AT : body + _SRC_AT + len(local)] == local
                    ):
                        found.append(_parse(data, body, offset + length))
                offset += (length + 3) & ~3

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


_info_at = [_MSG.size]


def _parse(data: bytes, start: int, end: int) -> TcpSocket:
    family, sport, dport, src, dst, interface, cookie, rqueue, wqueue, inode = _MSG.unpack_from(
        data, start
    )
    last_sent = last_recv = sent = received = 0
    attr = start + _MSG.size
    # Every socket of a dump carries the same attributes in the same order: try where tcp_info
    # was in the last one before walking them.
    guess = start + _info_at[0]
    if guess + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(data, guess)
        if attr_type == INET_DIAG_INFO and attr_len >= _RTATTR.size + _TCPI_OFFSET + _TCPI.size:
            attr = guess
    while attr + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(data, attr)
        if attr_len < _RTATTR.size:
            break
        if attr_type == INET_DIAG_INFO and attr_len >= _RTATTR.size + _TCPI_OFFSET + _TCPI.size:
            last_sent, _ack, last_recv, sent, received = _TCPI.unpack_from(
                data, attr + _RTATTR.size + _TCPI_OFFSET
            )
            _info_at[0] = attr - start
            break
        attr += (attr_len + 3) & ~3
    return TcpSocket(
        family,
        src,
        socket.ntohs(sport),
        dst,
        socket.ntohs(dport),
        cookie,
        interface,
        rqueue,
        wqueue,
        last_sent,
        last_recv,
        sent,
        received,
        inode,
    )
