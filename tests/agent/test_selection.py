import random
from dataclasses import replace

import pytest

from connbalance.agent.selection import ConnectionInfo, ceiling, freshly_quiet_first, pick, spread


def conn(conn_id: str, *, idle: float, queued: int = 0, opened: float = 0.0) -> ConnectionInfo:
    return ConnectionInfo(
        id=conn_id,
        peer=("127.0.4.9", 1),
        opened_at=opened,
        last_activity=100.0 - idle,
        idle_seconds=idle,
        bytes_in=0,
        bytes_out=0,
        queued=queued,
    )


@pytest.mark.parametrize(
    ("active", "fraction", "expected"),
    [(100, 0.1, 10), (100, 0.25, 25), (3, 0.25, 0), (7, 0.5, 3), (0, 1.0, 0), (5, 1.0, 5)],
)
def test_the_ceiling_rounds_down_so_it_is_never_exceeded(active, fraction, expected):
    assert ceiling(active=active, max_fraction=fraction) == expected


def test_quiet_connections_come_first_the_one_quiet_for_the_shortest_time_first():
    # A client that has just had its answer is the furthest from its next call.
    ranked = freshly_quiet_first(
        [
            conn("queued", idle=0.5, queued=10),
            conn("talking", idle=0.01),
            conn("idle", idle=9),
            conn("idler", idle=30),
            conn("fresh", idle=0.3),
            conn("nearly", idle=0.15),
        ],
        quiet_seconds=0.2,
    )
    # Quiet, most recently quiet first; then not quiet yet, the nearest to quiet first; then
    # queued data, which is never idle.
    assert [c.id for c in ranked] == ["fresh", "idle", "idler", "nearly", "talking", "queued"]


def test_a_pending_request_puts_a_connection_last_however_quiet():
    waiting = replace(conn("waiting", idle=0.5), client_spoke_last=True)
    ranked = freshly_quiet_first([waiting, conn("answered", idle=5)], quiet_seconds=0.2)
    assert [c.id for c in ranked] == ["answered", "waiting"]


def test_equally_idle_connections_go_oldest_first():
    ranked = freshly_quiet_first(
        [conn("young", idle=5, opened=50), conn("old", idle=5, opened=10)], quiet_seconds=0.2
    )
    assert [c.id for c in ranked] == ["old", "young"]


def test_closes_are_spread_one_per_slice_of_the_window():
    offsets = spread(count=10, window_seconds=2.0, rng=random.Random(7), start=0.0)
    assert len(offsets) == 10
    for i, offset in enumerate(offsets):
        assert 0.2 * i <= offset < 0.2 * (i + 1)


def test_two_agents_with_different_randomness_do_not_close_in_lockstep():
    first = spread(count=5, window_seconds=10.0, rng=random.Random(1), start=0.0)
    second = spread(count=5, window_seconds=10.0, rng=random.Random(2), start=0.0)
    assert first != second


def test_a_zero_window_closes_everything_at_once():
    assert spread(count=3, window_seconds=0.0, rng=random.Random(0), start=0.0) == [0.0, 0.0, 0.0]


def test_pick_skips_connections_that_are_claimed_or_were_not_there_when_the_request_came():
    candidates = [conn("a", idle=20), conn("b", idle=10), conn("new", idle=1)]
    chosen = pick(candidates, eligible=frozenset({"a", "b"}), claimed={"b"}, quiet_seconds=0.2)
    assert chosen is not None
    assert chosen.id == "a"
    assert pick(candidates, eligible=frozenset({"b"}), claimed={"b"}, quiet_seconds=0.2) is None
