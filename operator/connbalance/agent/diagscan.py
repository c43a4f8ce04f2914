"""A reset-mode scan as columns: what choosing the next socket to close reads, and no more.

A scan of 100,000 sockets that made a tuple of 14 fields per socket, and a dict of them by key,
spent about as long in Python as the kernel spent writing the dump. A choice reads six numbers
per socket: its key (the cookie), the two queues, the inode, and tcp_info's last data sent and
received. ``Scan`` reads just those out of the dump's chunks as columns, each one slice of the
chunk seen as 32-bit words, and unpacks a socket's whole row only when it is acted on (its quiet
wait, its destruction) or listed.
"""

from __future__ import annotations

from collections.abc import Iterator

from connbalance.agent.diagreply import (
    INODE_AT,
    RECV_QUEUE_AT,
    ROW_COOKIE,
    ROW_INODE,
    ROW_LAST_RECEIVED_MS,
    ROW_LAST_SENT_MS,
    ROW_RECV_QUEUE,
    ROW_SEND_QUEUE,
    SEND_QUEUE_AT,
    DumpChunk,
    DumpPart,
    SocketRow,
    last_data_at,
)


class Scan:
    """One dump's sockets, in the dump's order, as columns: ``keys`` (the cookie, hex, as
    ``TcpSocket.key`` spells it), ``recv_queue``, ``send_queue``, ``inode``, ``last_sent_ms``
    and ``last_received_ms``. ``row`` unpacks one socket's whole row. ``discard`` forgets a
    socket (one destroyed since the scan)."""

    __slots__ = (
        "_gone", "_hint", "_index", "_parts", "_starts", "inode", "keys", "last_received_ms",
        "last_sent_ms", "recv_queue", "send_queue",
    )  # fmt: skip

    def __init__(self, parts: list[DumpPart]) -> None:
        self._parts = parts
        self._starts: list[int] = []
        self.keys: list[str] = []
        self.recv_queue: list[int] = []
        self.send_queue: list[int] = []
        self.inode: list[int] = []
        self.last_sent_ms: list[int] = []
        self.last_received_ms: list[int] = []
        for part in parts:
            self._starts.append(len(self.keys))
            if isinstance(part, DumpChunk):
                self._read_chunk(part)
            else:
                self._read_rows(part)
        self._index: dict[str, int] | None = None
        self._hint = ("", -1)  # the last socket ``first_to_close`` chose, and where it is
        self._gone: set[str] = set()

    @classmethod
    def empty(cls) -> Scan:
        return cls([])

    def _read_chunk(self, chunk: DumpChunk) -> None:
        self.keys += chunk.cookie_keys()
        self.recv_queue += chunk.words(RECV_QUEUE_AT)
        self.send_queue += chunk.words(SEND_QUEUE_AT)
        self.inode += chunk.words(INODE_AT)
        if chunk.info_at:
            sent_at, received_at = last_data_at(chunk.info_at)
            self.last_sent_ms += chunk.words(sent_at)
            self.last_received_ms += chunk.words(received_at)
        else:
            self.last_sent_ms += [0] * len(chunk)
            self.last_received_ms += [0] * len(chunk)

    def _read_rows(self, rows: list[SocketRow]) -> None:
        self.keys += [row[ROW_COOKIE].hex() for row in rows]
        self.recv_queue += [row[ROW_RECV_QUEUE] for row in rows]
        self.send_queue += [row[ROW_SEND_QUEUE] for row in rows]
        self.inode += [row[ROW_INODE] for row in rows]
        self.last_sent_ms += [row[ROW_LAST_SENT_MS] for row in rows]
        self.last_received_ms += [row[ROW_LAST_RECEIVED_MS] for row in rows]

    def __len__(self) -> int:
        return len(self.keys) - len(self._gone)

    def key_set(self) -> frozenset[str]:
        keys = frozenset(self.keys)
        return keys - self._gone if self._gone else keys

    def row_at(self, index: int) -> SocketRow:
        part = len(self._starts) - 1
        while self._starts[part] > index:
            part -= 1
        found = self._parts[part]
        at = index - self._starts[part]
        return found.row(at) if isinstance(found, DumpChunk) else found[at]

    def find(self, key: str) -> int | None:
        """Where ``key``'s socket is in the columns, unless gone."""
        if key in self._gone:
            return None
        if self._hint[0] == key:
            return self._hint[1]
        if self._index is None:
            # Built once per scan, and only if something other than the last choice is asked.
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index.get(key)

    def row(self, key: str) -> SocketRow | None:
        index = self.find(key)
        return None if index is None else self.row_at(index)

    def discard(self, key: str) -> None:
        self._gone.add(key)

    def items(self) -> Iterator[tuple[str, SocketRow]]:
        for index, key in enumerate(self.keys):
            if key not in self._gone:
                yield key, self.row_at(index)

    def remember(self, key: str, index: int) -> None:
        self._hint = (key, index)

    def quiet_head(self, *, eligible: frozenset[str], claimed: set[str],
                   quiet_ms: float) -> int | None:
        """Where the first socket of ``selection.close_rank``'s order is when it is quiet and
        idle (no data either way for ``quiet_ms``, the server's word last, empty queues), as
        most often some socket is: the most freshly quiet, the older (lower inode) on a tie. One
        pass over the numbers, looking at the sets only for the quiet ones."""
        gone = self._gone
        columns = zip(self.last_sent_ms, self.last_received_ms, self.recv_queue,
                      self.send_queue, self.inode, self.keys, strict=True)  # fmt: skip
        head = min(
            (
                (sent, inode, index)
                for index, (sent, received, rq, sq, inode, key) in enumerate(columns)
                if received >= sent >= quiet_ms
                and not rq
                and not sq
                and key in eligible
                and key not in claimed
                and key not in gone
            ),
            default=None,
        )
        return None if head is None else head[2]


__all__ = ["Scan"]
