"""The controller comes back just after the moment it waits for, where it knows that moment:
the last pod settling, the drain window closing; otherwise at its usual ``most``."""

from __future__ import annotations

import pytest

from connbalance.controller import ControllerState
from connbalance.controller.results import Seen
from connbalance.controller.waits import MARGIN_SECONDS, measured_too_early, until_settled
from connbalance.model import Phase, PodLoad, PodName, PodState


def pod(name: str, ready_since: float | None, *, ready: bool = True) -> PodState:
    return PodState(name=PodName(name), ready=ready, ready_since=ready_since)


def test_a_settling_pool_is_looked_at_just_after_its_youngest_ready_pod_settles():
    pods = (pod("a", 100.0), pod("b", 108.0), pod("c", 95.0))
    wait = until_settled(pods, now=110.0, settle=5.0, most=5.0)
    assert wait == pytest.approx(3.0 + MARGIN_SECONDS)


def test_the_wait_is_never_longer_than_most_nor_shorter_than_the_margin():
    assert until_settled((pod("a", 110.0),), now=110.0, settle=30.0, most=5.0) == 5.0
    assert until_settled((pod("a", 90.0),), now=110.0, settle=5.0, most=5.0) == MARGIN_SECONDS


def test_a_ready_pod_of_unknown_age_or_no_ready_pod_waits_most():
    assert until_settled((pod("a", 109.0), pod("b", None)), now=110, settle=5, most=4) == 4
    assert until_settled((pod("a", None, ready=False),), now=110, settle=5, most=4) == 4


def test_a_load_from_before_the_window_closed_waits_for_the_close_then_for_the_next_scrape():
    state = ControllerState(last_step_at=100.0)
    measured = {PodName("a"): PodLoad(pod=PodName("a"), load=3, timestamp=101.0)}
    early = measured_too_early(state, measured, Seen(), now=101.0, window=2.0, most=5.0)
    assert early is not None
    assert early.state.phase is Phase.COOLING_DOWN
    assert early.requeue_after == pytest.approx(1.0 + MARGIN_SECONDS)
    # The window has closed, but the load is still from before: the next look is at ``most``.
    late = measured_too_early(state, measured, Seen(), now=103.0, window=2.0, most=5.0)
    assert late is not None
    assert late.requeue_after == 5.0


def test_a_load_measured_after_the_window_or_with_no_step_is_not_waited_for():
    measured = {PodName("a"): PodLoad(pod=PodName("a"), load=3, timestamp=102.5)}
    stepped = ControllerState(last_step_at=100.0)
    assert measured_too_early(stepped, measured, Seen(), now=103, window=2, most=5) is None
    unstepped = ControllerState()
    assert measured_too_early(unstepped, measured, Seen(), now=103, window=2, most=5) is None
