"""The replies of an inet_diag dump: each socket's message read into a row, or kept whole in
chunks of identical messages that columns are read out of (``DumpChunk``).

A dump's messages have one layout (the kernel writes the same attributes for every socket), so a
chunk of them is checked byte for byte against its first message and then unpacked by one
``struct.iter_unpack``, or kept as it came for ``diagscan`` to read column by column; any other
chunk is read message by message.
"""

from __future__ import annotations

import errno
import os
import struct
from functools import lru_cache
from typing import Any

NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
# inet_diag_msg in one go (a scan parses ten thousand): family, 3 skipped, the socket id (ports in
# network order), expires skipped, queues, uid skipped, inode.
_MSG = struct.Struct("=B3xHH16s16sI8s4xII4xI")
# tcp_info from byte 44: last_data_sent, (last_ack_sent skipped), last_data_recv (milliseconds
# ago), then bytes_acked and bytes_received at 120 and 128.
_TCPI = struct.Struct("=I4xI64xQQ")
_TCPI_OFFSET = 44

class NetlinkError(OSError):
    """The kernel refused a sock_diag request."""


# A socket as a dump delivers it, unpacked by struct alone: a scan of 100,000 sockets makes one
# plain tuple each and a TcpSocket only for the few it acts on. Its fields, by index: family,
# the two ports in network order (ntohs them), local and remote address, interface, cookie, the
# two queues, inode; then tcp_info's last data sent and received (ms ago), bytes sent (acked)
# and received, all zero in a dump without tcp_info.
SocketRow = tuple[Any, ...]
(
    ROW_FAMILY, ROW_SPORT, ROW_DPORT, ROW_SRC, ROW_DST, ROW_INTERFACE, ROW_COOKIE,
    ROW_RECV_QUEUE, ROW_SEND_QUEUE, ROW_INODE, ROW_LAST_SENT_MS, ROW_LAST_RECEIVED_MS,
    ROW_BYTES_SENT, ROW_BYTES_RECEIVED,
) = range(14)  # fmt: skip


class DumpChunk:
    """Whole dump messages of one length and layout (as ``_uniform_chunk`` accepts them), kept
    as the kernel wrote them: columns are read out of them at once, a whole row only on demand.
    ``info_at``: where each message's tcp_info attribute starts (0: a dump without it)."""

    __slots__ = ("_words", "data", "info_at", "length")

    def __init__(self, data: bytes, length: int, info_at: int) -> None:
        self.data, self.length, self.info_at = data, length, info_at
        self._words = memoryview(data).cast("I")

    def __len__(self) -> int:
        return len(self.data) // self.length

    def rows(self) -> list[SocketRow]:
        return list(_row_layout(self.length, self.info_at).iter_unpack(self.data))

    def row(self, index: int) -> SocketRow:
        return _row_layout(self.length, self.info_at).unpack_from(self.data, index * self.length)

    def words(self, offset: int) -> list[int]:
        """The 32-bit number at byte ``offset`` of every message (4-aligned, as all are)."""
        return self._words[offset // 4 :: self.length // 4].tolist()


# A dump as received: chunks of uniform messages, and the rows of any read one by one.
DumpPart = DumpChunk | list[SocketRow]
# Byte offsets in a message (after its 16-byte header) of what a choice of socket reads.
COOKIE_AT, RECV_QUEUE_AT, SEND_QUEUE_AT, INODE_AT = 60, 72, 76, 84


def _uniform_chunk(data: bytes, kind: int, seq: int, *, with_info: bool) -> DumpChunk | None:
    """``data`` as one ``DumpChunk`` when its messages are all socket messages of one length
    and layout, as a dump's messages are (the kernel writes the same attributes for every
    socket); None otherwise, for ``_walk`` to read one by one. Checked, not assumed: every
    message's length, type and flags, sequence number, and where tcp_info is read, its
    attribute's length and type, each compared with the first message's as a column of 32-bit
    words (a chunk is about 80 messages, and a dump of 100,000 sockets some 1,300 chunks)."""
    if len(data) < _NLMSGHDR.size + _MSG.size:
        return None
    length, msg_kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, 0)
    if msg_kind != kind or msg_seq != seq or length % 4 or len(data) % length:
        return None
    info_at = _info_offset(data, length) if with_info else 0
    if info_at is None:
        return None
    chunk = DumpChunk(data, length, info_at)
    checked = [0, 4, 8] + ([info_at] if with_info else [])  # length; type, flags; sequence
    count = len(chunk)
    if any((column := chunk.words(at)).count(column[0]) != count for at in checked):
        return None
    return chunk


def _uniform_rows(data: bytes, kind: int, seq: int, *, with_info: bool) -> list[SocketRow] | None:
    """``_uniform_chunk``'s messages as rows, in one ``struct.iter_unpack``."""
    chunk = _uniform_chunk(data, kind, seq, with_info=with_info)
    return None if chunk is None else chunk.rows()


def rows_of(parts: list[DumpPart]) -> list[SocketRow]:
    """A dump's parts as one list of rows."""
    return [row for part in parts for row in (part.rows() if isinstance(part, DumpChunk) else part)]


def last_data_at(info_at: int) -> tuple[int, int]:
    """Where tcp_info's last data sent and last data received (ms ago) sit in a message whose
    tcp_info attribute starts at ``info_at``."""
    fields = info_at + _RTATTR.size + _TCPI_OFFSET
    return fields, fields + 8


def _info_offset(data: bytes, length: int) -> int | None:
    """Where tcp_info's attribute starts in the first message of ``data``, if it is whole."""
    attr = _NLMSGHDR.size + _MSG.size
    while attr + _RTATTR.size <= length:
        attr_len, attr_type = _RTATTR.unpack_from(data, attr)
        if attr_len < _RTATTR.size:
            return None
        if attr_type == INET_DIAG_INFO:
            whole = attr_len >= _RTATTR.size + _TCPI_OFFSET + _TCPI.size
            return attr if whole and attr + attr_len <= length else None
        attr += (attr_len + 3) & ~3
    return None


_HEAD = "=16x" + _MSG.format.lstrip("=")


@lru_cache(maxsize=8)
def _row_layout(length: int, info_at: int) -> struct.Struct:
    """A struct that reads one message of ``length`` bytes into a ``SocketRow``; without
    tcp_info (``info_at`` 0) the row stops before tcp_info's fields, for counting."""
    if not info_at:
        return struct.Struct(_HEAD + f"{length - _NLMSGHDR.size - _MSG.size}x")
    gap = info_at - _NLMSGHDR.size - _MSG.size + _RTATTR.size + _TCPI_OFFSET
    rest = length - info_at - _RTATTR.size - _TCPI_OFFSET - _TCPI.size
    return struct.Struct(_HEAD + f"{gap}x" + _TCPI.format.lstrip("=") + f"{rest}x")


def _walk(data: bytes, kind: int, seq: int, found: list[SocketRow], *, with_info: bool) -> bool:
    """Read ``data`` message by message into ``found``; True at the dump's end."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise NetlinkError(errno.EPROTO, "truncated netlink message")
        body = offset + _NLMSGHDR.size
        if msg_seq == seq:
            if msg_kind == NLMSG_DONE:
                return True
            if msg_kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, body)
                raise NetlinkError(-code, f"inet_diag dump: {os.strerror(-code)}")
            if msg_kind == kind:
                found.append(_parse(data, offset, offset + length, with_info=with_info))
        offset += (length + 3) & ~3
    return False


def _parse(data: bytes, start: int, end: int, *, with_info: bool) -> SocketRow:
    msg = _MSG.unpack_from(data, start + _NLMSGHDR.size)
    info: tuple[int, ...] = (0, 0, 0, 0)
    attr = start + _NLMSGHDR.size + _MSG.size
    while with_info and attr + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(data, attr)
        if attr_len < _RTATTR.size:
            break
        if attr_type == INET_DIAG_INFO and attr_len >= _RTATTR.size + _TCPI_OFFSET + _TCPI.size:
            info = _TCPI.unpack_from(data, attr + _RTATTR.size + _TCPI_OFFSET)
            break
        attr += (attr_len + 3) & ~3
    return (*msg, *info)
