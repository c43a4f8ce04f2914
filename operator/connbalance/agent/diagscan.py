"""A reset-mode scan as columns: what choosing the next socket to close reads, and no more.

A scan of 100,000 sockets that made a tuple of 14 fields per socket, and a dict of them by key,
spent about as long in Python as the kernel spent writing the dump. A choice reads six numbers
per socket: its cookie, the two queues, the inode, and tcp_info's last data sent and received.
``Scan`` reads just those out of the dump's chunks as columns, each one strided slice of the
chunk seen as 32-bit words, and unpacks a socket's whole row only when it is acted on (its quiet
wait, its destruction) or listed. Sockets are told apart by their cookie as a number; the hex key
the engine speaks (``TcpSocket.key``) is spelled only for the sockets acted on, and a request's
eligible sockets are a ``CookieSet``, which holds numbers and answers for keys.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Set
from itertools import compress, repeat
from operator import and_, eq, ge, lshift, or_

from connbalance.agent.diagreply import (
    COOKIE_AT,
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


def key_of(cookie: int) -> str:
    """A cookie as ``TcpSocket.key`` spells it: its 8 bytes as the kernel wrote them, in hex."""
    return cookie.to_bytes(8, "little").hex()


def cookie_of(key: str) -> int | None:
    """The cookie ``key`` spells, or None when it spells none."""
    if len(key) != 16:
        return None
    try:
        return int.from_bytes(bytes.fromhex(key), "little")
    except ValueError:
        return None


class CookieSet(Set[str]):
    """Socket keys held as cookie numbers, as a scan's column gives them: made at C speed, and
    a key is converted only when it is looked up."""

    __slots__ = ("cookies",)

    def __init__(self, cookies: frozenset[int]) -> None:
        self.cookies = cookies

    def __contains__(self, key: object) -> bool:
        cookie = cookie_of(key) if isinstance(key, str) else None
        return cookie is not None and cookie in self.cookies

    def __iter__(self) -> Iterator[str]:
        return map(key_of, self.cookies)

    def __len__(self) -> int:
        return len(self.cookies)


def _cookies(keys: Set[str]) -> Set[int]:
    if isinstance(keys, CookieSet):
        return keys.cookies
    return {c for c in map(cookie_of, keys) if c is not None}


class Scan:
    """One dump's sockets, in the dump's order, as columns: ``cookies``, ``recv_queue``,
    ``send_queue``, ``inode``, ``last_sent_ms`` and ``last_received_ms``. ``row`` unpacks one
    socket's whole row. ``discard`` forgets a socket (one destroyed since the scan)."""

    __slots__ = (
        "_gone", "_hint", "_index", "_parts", "_starts", "cookies", "inode", "last_received_ms",
        "last_sent_ms", "recv_queue", "send_queue",
    )  # fmt: skip

    def __init__(self, parts: list[DumpPart]) -> None:
        self._parts = parts
        self._starts: list[int] = []
        self.cookies: list[int] = []
        self.recv_queue: list[int] = []
        self.send_queue: list[int] = []
        self.inode: list[int] = []
        self.last_sent_ms: list[int] = []
        self.last_received_ms: list[int] = []
        for part in parts:
            self._starts.append(len(self.cookies))
            if isinstance(part, DumpChunk):
                self._read_chunk(part)
            else:
                self._read_rows(part)
        self._index: dict[int, int] | None = None
        self._hint = (-1, -1)  # the last socket ``first_to_close`` chose, and where it is
        self._gone: set[int] = set()

    @classmethod
    def empty(cls) -> Scan:
        return cls([])

    def _read_chunk(self, chunk: DumpChunk) -> None:
        low, high = chunk.words(COOKIE_AT), chunk.words(COOKIE_AT + 4)
        self.cookies += map(or_, low, map(lshift, high, repeat(32)))
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
        self.cookies += [int.from_bytes(row[ROW_COOKIE], "little") for row in rows]
        self.recv_queue += [row[ROW_RECV_QUEUE] for row in rows]
        self.send_queue += [row[ROW_SEND_QUEUE] for row in rows]
        self.inode += [row[ROW_INODE] for row in rows]
        self.last_sent_ms += [row[ROW_LAST_SENT_MS] for row in rows]
        self.last_received_ms += [row[ROW_LAST_RECEIVED_MS] for row in rows]

    def __len__(self) -> int:
        return len(self.cookies) - len(self._gone)

    def key_set(self) -> CookieSet:
        cookies = frozenset(self.cookies)
        return CookieSet(cookies - self._gone if self._gone else cookies)

    def key_at(self, index: int) -> str:
        return key_of(self.cookies[index])

    def row_at(self, index: int) -> SocketRow:
        part = bisect_right(self._starts, index) - 1
        found = self._parts[part]
        at = index - self._starts[part]
        return found.row(at) if isinstance(found, DumpChunk) else found[at]

    def find(self, key: str) -> int | None:
        """Where ``key``'s socket is in the columns, unless gone."""
        cookie = cookie_of(key)
        if cookie is None or cookie in self._gone:
            return None
        if self._hint[0] == cookie:
            return self._hint[1]
        if self._index is None:
            # Built once per scan, and only if something other than the last choice is asked.
            self._index = dict(zip(self.cookies, range(len(self.cookies)), strict=True))
        return self._index.get(cookie)

    def row(self, key: str) -> SocketRow | None:
        index = self.find(key)
        return None if index is None else self.row_at(index)

    def discard(self, key: str) -> None:
        cookie = cookie_of(key)
        if cookie is not None:
            self._gone.add(cookie)

    def items(self) -> Iterator[tuple[str, SocketRow]]:
        for index, cookie in enumerate(self.cookies):
            if cookie not in self._gone:
                yield key_of(cookie), self.row_at(index)

    def remember(self, index: int) -> None:
        self._hint = (self.cookies[index], index)

    def free(self, *, eligible: Set[str], claimed: set[str]) -> list[int]:
        """Where the sockets are that may be closed: eligible, not claimed, not gone."""
        allowed, taken = _cookies(eligible), _cookies(claimed) | self._gone
        return [i for i, c in enumerate(self.cookies) if c in allowed and c not in taken]

    def quiet_head(self, *, eligible: Set[str], claimed: set[str], quiet_ms: float) -> int | None:
        """Where the first socket of ``selection.close_rank``'s order is when it is quiet and
        idle (no data either way for ``quiet_ms``, the server's word last, empty queues), as
        most often some socket is: the most freshly quiet, the older (lower inode) on a tie.

        The numbers are compared by ``map`` over the columns, never a Python loop per socket:
        the least last-sent among the quiet is found first, and only the sockets tied at it are
        looked at one by one (queues, sets); if none of them may be closed, the next least."""
        sent, received = self.last_sent_ms, self.last_received_ms
        allowed, taken = _cookies(eligible), _cookies(claimed) | self._gone
        floor = quiet_ms
        while True:
            quiet = map(and_, map(ge, received, sent), map(ge, sent, repeat(floor)))
            least = min(compress(sent, quiet), default=None)
            if least is None:
                return None
            tied = list(compress(range(len(sent)), map(eq, sent, repeat(least))))
            tied.sort(key=self.inode.__getitem__)
            for index in tied:
                cookie = self.cookies[index]
                if (received[index] >= least and not self.recv_queue[index]
                        and not self.send_queue[index] and cookie in allowed
                        and cookie not in taken):  # fmt: skip
                    return index
            floor = least + 1  # last-sent is whole milliseconds


__all__ = ["CookieSet", "Scan", "cookie_of", "key_of"]
