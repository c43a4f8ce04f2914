"""The reset agent's cheap paths give what the plain ones give: rows unpacked a chunk at a time
read the same as message by message, columns read out of whole chunks are the rows' fields, one
walk over both families lists what two walks list, and the choice over a scan's columns is the
head of ``freshly_quiet_first`` over ConnectionInfo."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Set

import pytest

from connbalance.agent import netlink
from connbalance.agent.diagscan import CookieSet, Scan, cookie_of
from connbalance.agent.netlink import (
    ROW_BYTES_RECEIVED,
    ROW_BYTES_SENT,
    ROW_INODE,
    ROW_LAST_RECEIVED_MS,
    ROW_LAST_SENT_MS,
    ROW_RECV_QUEUE,
    ROW_SEND_QUEUE,
    DumpChunk,
    SockDiag,
    SocketRow,
    TcpSocket,
)
from connbalance.agent.reset import first_to_close
from connbalance.agent.selection import ConnectionInfo, freshly_quiet_first

HOST = "127.0.4.21"


def _raw_dump(diag: SockDiag, port: int) -> tuple[list[bytes], int]:
    """The reply chunks of one dump of ``port`` with tcp_info, and its sequence number."""
    seq = 9_000 + port
    payload = (
        netlink._REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 2, 1 << netlink.TCP_ESTABLISHED)
        + netlink._SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
        + netlink._SOCKID_TAIL.pack(0, b"\0" * 8)
        + netlink._local_condition(port, HOST)
    )
    diag._send(netlink.SOCK_DIAG_BY_FAMILY, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
               payload)  # fmt: skip
    chunks = []
    while True:
        data = diag._sock.recv(1 << 20)
        chunks.append(data)
        if struct.unpack_from("=H", data, len(data) - 16)[0] == netlink.NLMSG_DONE:
            return chunks, seq


@pytest.fixture
def held_connections():
    """Twenty connections to HOST, each having carried a different amount of data."""
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        clients, served = [], []
        for i in range(20):
            clients.append(socket.create_connection((HOST, port)))
            conn, _ = listener.accept()
            served.append(conn)
            clients[-1].sendall(b"x" * (i + 1))
            assert conn.recv(64) == b"x" * (i + 1)
        try:
            yield port
        finally:
            for sock in clients + served:
                sock.close()


def test_chunks_unpacked_at_once_read_as_message_by_message(held_connections):
    with SockDiag() as diag:
        chunks, seq = _raw_dump(diag, held_connections)
    kind = netlink.SOCK_DIAG_BY_FAMILY
    at_once: list[SocketRow] = []
    one_by_one: list[SocketRow] = []
    for chunk in chunks:
        rows = netlink._uniform_rows(chunk, kind, seq, with_info=True)
        at_once += rows if rows is not None else []
        netlink._walk(chunk, kind, seq, one_by_one, with_info=True)
    assert len(one_by_one) == 20
    assert at_once == one_by_one  # every chunk of sockets alone was unpacked at once
    assert sorted(r[ROW_BYTES_RECEIVED] for r in at_once) == list(range(1, 21))


def test_a_chunk_with_one_odd_message_is_read_message_by_message(held_connections):
    with SockDiag() as diag:
        chunks, seq = _raw_dump(diag, held_connections)
    kind = netlink.SOCK_DIAG_BY_FAMILY
    data = bytearray(next(c for c in chunks if len(c) > 100))
    length = struct.unpack_from("=I", data, 0)[0]
    struct.pack_into("=H", data, length + 4, netlink.NLMSG_DONE)  # the second message ends it
    assert netlink._uniform_rows(bytes(data), kind, seq, with_info=True) is None
    rows: list[SocketRow] = []
    assert netlink._walk(bytes(data), kind, seq, rows, with_info=True)
    assert len(rows) == 1


def test_one_walk_over_both_families_lists_what_a_walk_per_family_lists(held_connections):
    port = held_connections
    with socket.socket(socket.AF_INET6) as six:
        six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        six.bind(("::1", port))  # the same port in the other family
        six.listen()
        with socket.create_connection(("::1", port)) as client:
            mine = client.getsockname()[:2]
            served, _ = six.accept()
            with served, SockDiag() as one, SockDiag() as two:
                two._one_walk = False
                listed = [d.established(port=port) for d in (one, two)]
                assert one._one_walk
    assert {s.key for s in listed[0]} == {s.key for s in listed[1]}
    assert sorted(s.family for s in listed[0]) == [socket.AF_INET] * 20 + [socket.AF_INET6]
    assert [s.remote for s in listed[0] if s.family == socket.AF_INET6] == [mine]


def test_an_ipv4_address_also_finds_its_v4_mapped_sockets_in_either_way():
    with socket.socket(socket.AF_INET6) as dual:
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen()
        port = dual.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            mine = client.getsockname()
            served, _ = dual.accept()
            with served, SockDiag() as one, SockDiag() as two:
                two._one_walk = False
                listed = [d.established(port=port, address=HOST) for d in (one, two)]
    for found in listed:
        assert [(s.family, s.local, s.remote) for s in found] == [
            (socket.AF_INET6, (HOST, port), mine)
        ]


def test_counting_lists_as_many_as_the_scan(held_connections):
    with SockDiag() as diag:
        assert diag.count_established(port=held_connections, address=HOST) == 20
        assert diag.count_established(port=held_connections, address="127.0.4.22") == 0


def _row(rng: random.Random, inode: int, key: str) -> SocketRow:
    sent, received = rng.choice([0, 50, 150, 400, 2_000]), rng.choice([0, 50, 150, 400, 2_000])
    queued = rng.random() < 0.1
    return (socket.AF_INET, 1, 2, b"", b"", 0, bytes.fromhex(key), int(queued) * 10, 0, inode,
            sent, received, 0, 0)  # fmt: skip


def _info(key: str, row: SocketRow) -> ConnectionInfo:
    idle = min(row[ROW_LAST_SENT_MS], row[ROW_LAST_RECEIVED_MS]) / 1000.0
    return ConnectionInfo(
        id=key,
        peer=("127.0.0.1", 1),
        opened_at=float(row[ROW_INODE]),
        last_activity=0.0,
        idle_seconds=idle,
        bytes_in=row[ROW_BYTES_RECEIVED],
        bytes_out=row[ROW_BYTES_SENT],
        queued=row[ROW_RECV_QUEUE] + row[ROW_SEND_QUEUE],
        client_spoke_last=row[ROW_LAST_RECEIVED_MS] < row[ROW_LAST_SENT_MS],
    )


@pytest.mark.parametrize("seed", range(30))
def test_the_choice_over_rows_is_the_head_of_the_order_over_connections(seed):
    rng = random.Random(seed)
    rows = {(k := f"{rng.getrandbits(64):016x}"): _row(rng, rng.randrange(10_000), k)
            for _ in range(rng.randrange(1, 40))}  # fmt: skip
    # The eligible keys as the engine holds them: a frozenset (the proxy's), or the scan's own
    # set of cookie numbers (reset mode's).
    eligible: Set[str] = frozenset(k for k in rows if rng.random() < 0.8)
    claimed = {k for k in rows if rng.random() < 0.2}
    gone = {k for k in rows if rng.random() < 0.1}  # destroyed since the scan
    quiet = rng.choice([0.1, 0.2, 1.0])
    ordered = freshly_quiet_first(
        [_info(k, r) for k, r in rows.items()
         if k in eligible and k not in claimed and k not in gone],
        quiet_seconds=quiet,
    )  # fmt: skip
    expected = ordered[0].id if ordered else None
    scan = Scan([list(rows.values())])
    if seed % 2:
        eligible = CookieSet(frozenset(c for c in map(cookie_of, eligible) if c is not None))
    for key in gone:
        scan.discard(key)
    chosen = first_to_close(scan, eligible=eligible, claimed=claimed, quiet_seconds=quiet)
    assert chosen == expected
    if chosen is not None:
        assert scan.row(chosen) == rows[chosen]  # found again without an index


def test_a_scans_columns_read_from_whole_chunks_are_the_rows_fields(held_connections):
    with SockDiag() as diag:
        parts = diag.established_parts(port=held_connections, address=HOST)
    assert any(isinstance(part, DumpChunk) for part in parts)
    rows = netlink.rows_of(parts)  # the same dump, each socket a whole row
    walked = Scan([rows])
    columns = Scan(parts)
    assert len(columns) == len(walked) == 20
    assert sorted(columns.cookies) == sorted(walked.cookies)
    by_key = {TcpSocket.from_row(row).key: row for row in rows}
    for i in range(len(columns.cookies)):
        key = columns.key_at(i)
        row = by_key[key]
        assert (columns.recv_queue[i], columns.send_queue[i], columns.inode[i],
                columns.last_sent_ms[i], columns.last_received_ms[i]) == (
            row[ROW_RECV_QUEUE], row[ROW_SEND_QUEUE], row[ROW_INODE], row[ROW_LAST_SENT_MS],
            row[ROW_LAST_RECEIVED_MS])  # fmt: skip
        assert columns.row(key) == row
    gone = columns.key_at(3)
    columns.discard(gone)
    assert columns.row(gone) is None
    assert gone not in columns.key_set()
    assert len(columns) == 19
