"""``PodChanges``: what was read is reused only while its namespace has not moved since the read
began, and never past the resync period."""

from __future__ import annotations

from connbalance.kube.podchanges import PodChanges


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_reused_until_its_namespace_moves():
    changes = PodChanges(clock=Clock(), resync_seconds=60)
    assert changes.reusable("fleet", "a") is None  # nothing kept yet
    changes.keep("fleet", version=changes.version("a"), value="view")
    assert changes.reusable("fleet", "a") == "view"
    changes.bump("b")  # another namespace
    assert changes.reusable("fleet", "a") == "view"
    changes.bump("a")
    assert changes.reusable("fleet", "a") is None


def test_a_change_made_during_the_read_is_not_hidden_by_it():
    changes = PodChanges(clock=Clock(), resync_seconds=60)
    version = changes.version("a")  # taken before the read
    changes.bump("a")  # a watch event while the read was under way
    changes.keep("fleet", version=version, value="view")
    assert changes.reusable("fleet", "a") is None


def test_nothing_is_reused_past_the_resync_period():
    clock = Clock()
    changes = PodChanges(clock=clock, resync_seconds=60)
    changes.keep("fleet", version=0, value="view")
    clock.now = 59.9
    assert changes.reusable("fleet", "a") == "view"
    clock.now = 60.0
    assert changes.reusable("fleet", "a") is None


def test_keeping_drops_what_has_aged_out_and_forget_drops_one():
    clock = Clock()
    changes = PodChanges(clock=clock, resync_seconds=60)
    changes.keep("gone", version=0, value="old")
    clock.now = 61.0
    changes.keep("fleet", version=0, value="view")
    clock.now = 0.0  # even read on a clock turned back, the aged entry is no longer there
    assert changes.reusable("gone", "a") is None
    changes.forget("fleet")
    assert changes.reusable("fleet", "a") is None
