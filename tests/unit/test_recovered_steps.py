"""A step the pods carry but status lost (a crash between delivery and the status write, a
delivery cut short) still counts in ``requested_total``: what the agents were asked is what
status says was asked, found by the fault tests (tests/faults)."""

from __future__ import annotations

from connbalance.controller import ControllerState
from connbalance.controller.state import request_id, step_of
from connbalance.model import PodName
from tests.unit.test_controller import World


def test_a_step_recovered_from_the_pods_counts_in_requested_total():
    world = World({"a": 364, "b": 236, "c": 0})
    world.tick()
    asked = sum(r.count for _, r in world.actuator.delivered)
    assert asked > 0
    world.state = ControllerState()  # the status write was lost with the crash
    world.clock.advance(1)
    recovered = world.tick(world.controller())
    assert recovered.state.requested_total == asked


def test_a_step_cut_short_counts_what_reached_the_pods():
    world = World({"a": 364, "b": 236, "c": 0})
    world.actuator.fail_on = {"b"}
    world.tick()
    [(_, reached)] = world.actuator.delivered
    world.actuator.fail_on = set()
    world.clock.advance(1)
    assert world.tick(world.controller()).state.requested_total == reached.count


def test_a_step_status_already_knows_is_not_counted_twice():
    world = World({"a": 364, "b": 236, "c": 0})
    first = world.tick()
    world.clock.advance(1)
    again = world.tick(world.controller())
    assert again.state.requested_total == first.state.requested_total


def _episode_after_a_lost_status_write(seconds_later: float) -> tuple[str | None, str | None]:
    world = World({"a": 364, "b": 236, "c": 0})
    first = world.tick().state.episode
    world.state = ControllerState()  # the status write was lost with the crash
    world.clock.advance(seconds_later)
    return first, world.tick(world.controller()).state.episode


def test_an_operator_back_minutes_after_its_crash_resumes_the_episode_its_pods_carry():
    first, resumed = _episode_after_a_lost_status_write(150)  # 5 cooldowns
    assert first is not None
    assert resumed == first


def test_a_step_older_than_the_resume_horizon_starts_a_new_episode():
    first, later = _episode_after_a_lost_status_write(3600)
    assert first is not None
    assert later != first


def test_a_request_id_names_its_episode_and_step_and_no_other_id_does():
    written = request_id(episode="e1f2", step=3, pod=PodName("auth.0"))
    assert step_of(written) == ("e1f2", 3)
    for other in ("forged-1", "cb.e1f2.x.auth-0", "cb.e1f2.3", "xb.e1f2.3.auth-0", ""):
        assert step_of(other) is None, other
