"""A pod in the last good answer and missing now is in a scrape gap: the tick waits and says
nothing, for maxStalenessSeconds from the first look that missed it."""

from __future__ import annotations

import pytest

from connbalance.controller import Controller
from connbalance.kube.reconcile import _differs, _stored
from connbalance.kube.status import status_patch
from connbalance.kube.wiring import build_controller
from connbalance.model import Phase, PolicyName
from connbalance.ports import MetricsEmpty, MetricsPodMissing
from tests.unit.test_controller import NAME, World

STALENESS = 30.0


def balanced_world() -> tuple[World, dict[str, object]]:
    """A balanced pool read once, and the status that reading wrote, as the API server keeps it."""
    world = World({"a": 100, "b": 100, "c": 100}, metrics__maxStalenessSeconds=STALENESS)
    result = world.tick()
    assert result.state.phase is Phase.BALANCED
    return world, _stored(status_patch(result, policy=NAME, generation=1, previous=None))


def c_goes_missing(world: World, *, after: float) -> None:
    world.clock.advance(after)
    world.loads.error = MetricsPodMissing("no series for pod c", pods=("c",))


@pytest.mark.parametrize("error", [
    MetricsPodMissing("no series for pod c", pods=("c",)),
    MetricsEmpty("query returned no series"),
])
def test_a_pod_read_within_max_staleness_and_missing_now_waits_and_writes_nothing(error):
    world, status = balanced_world()
    before = world.state
    world.clock.advance(STALENESS - 1)
    world.loads.error = error
    result = world.tick()
    assert result.state == before
    assert result.conditions == ()
    assert result.waiting
    assert 0 < result.requeue_after <= 5
    assert world.events.reasons() == []
    new = status_patch(result, policy=NAME, generation=1, previous=status)
    assert not _differs(status, new)


def test_nothing_is_drained_on_a_partial_reading():
    """The pool turned skewed while c is in a gap: a plan on a and b alone would shed a."""
    world, _ = balanced_world()
    world.loads.values = {"a": 300, "b": 0, "c": 0}
    c_goes_missing(world, after=5)
    result = world.tick()
    assert result.issued == ()
    assert world.actuator.delivered == []
    assert result.state.phase is Phase.BALANCED


def test_a_pod_missing_for_max_staleness_is_the_metrics_fault():
    world, _ = balanced_world()
    c_goes_missing(world, after=5)
    assert world.tick().waiting
    world.clock.advance(STALENESS - 1)
    assert world.tick().waiting
    world.clock.advance(1)  # STALENESS since the first look that missed c
    result = world.tick()
    assert result.state.phase is Phase.DEGRADED
    assert ("MetricsAvailable", "False", "PodMissing") in {
        (c.type, c.status, c.reason) for c in result.conditions
    }
    assert world.events.reasons() == ["PodMissing"]


def test_a_gap_is_timed_from_the_first_miss_not_from_a_reading_a_balanced_interval_old():
    """A balanced pool is read every balancedIntervalSeconds (60 s by default): its last reading
    is often older than maxStalenessSeconds when a scrape fails."""
    world, status = balanced_world()
    c_goes_missing(world, after=60)
    result = world.tick()
    assert result.waiting
    assert not _differs(status, status_patch(result, policy=NAME, generation=1, previous=status))
    assert world.events.reasons() == []


def test_the_gap_closes_when_the_pod_is_read_again():
    world, _ = balanced_world()
    c_goes_missing(world, after=5)
    assert world.tick().waiting
    world.clock.advance(20)
    world.loads.error = None
    assert world.tick().state.phase is Phase.BALANCED
    c_goes_missing(world, after=20)  # 40 s after the first miss, the first of a new gap
    assert world.tick().waiting


def test_a_pod_replaced_by_one_of_the_same_name_does_not_inherit_its_last_reading():
    """A StatefulSet's pod comes back under its name with a new UID; Ready for longer than the
    new-pod grace, its absence is the metrics' fault even a second after the old one's
    reading."""
    world, _ = balanced_world()
    world.fleet.replace_pod("c", uid="uid-c2", since=world.clock.now - 2 * STALENESS)
    c_goes_missing(world, after=1)
    result = world.tick()
    assert not result.waiting
    assert result.state.phase is Phase.DEGRADED
    assert world.events.reasons() == ["PodMissing"]


def test_a_gap_beside_a_pod_missing_for_good_is_the_metrics_fault():
    world, _ = balanced_world()
    world.fleet.replace_pod("b", uid="uid-b2", since=world.clock.now - 2 * STALENESS)
    world.clock.advance(5)
    world.loads.error = MetricsPodMissing("no series for pods b, c", pods=("b", "c"))
    assert world.tick().state.phase is Phase.DEGRADED


def test_a_pod_never_read_is_not_in_a_gap():
    world = World({"a": 100, "b": 100, "c": 100}, metrics__maxStalenessSeconds=STALENESS)
    world.loads.error = MetricsPodMissing("no series for pod c", pods=("c",))
    assert world.tick().state.phase is Phase.DEGRADED


def test_without_readings_kept_across_ticks_a_gap_is_an_error_at_once():
    world, _ = balanced_world()
    c_goes_missing(world, after=5)
    forgetful = Controller(name=NAME, policy=world.policy, loads=world.loads,
                           fleet=world.fleet, actuator=world.actuator, events=world.events,
                           clock=world.clock)  # fmt: skip
    assert world.tick(forgetful).state.phase is Phase.DEGRADED


def test_the_kube_layer_keeps_each_balancers_readings_across_reconciles():
    """The controller is rebuilt at every reconcile: its readings must not be."""
    world = World({"a": 100}, metrics__maxStalenessSeconds=STALENESS)

    def readings(name: str) -> object:
        wired = build_controller(name=PolicyName(name), namespace="teleport", policy=world.policy,
                                 events=world.events, core=None, apps=None)  # fmt: skip
        return wired.controller._readings

    assert readings("teleport/auth") is readings("teleport/auth")
    assert readings("teleport/other") is not readings("teleport/auth")
