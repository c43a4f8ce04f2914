"""A step the pods carry but status lost (a crash between delivery and the status write, a
delivery cut short) still counts in ``requested_total``: what the agents were asked is what
status says was asked, found by the fault tests (tests/faults)."""

from __future__ import annotations

from connbalance.controller import ControllerState
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
