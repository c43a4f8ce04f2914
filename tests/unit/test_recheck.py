"""A balanced pool is looked at again less often than a pool being stepped: any change to it
wakes its loop (``connbalance.kube.loops``), so the wait only bounds how late drift is seen."""

from __future__ import annotations

import pytest

from connbalance.model import Phase
from tests.unit.test_controller import World


@pytest.mark.parametrize(("mode", "step", "balanced", "wait"), [
    ("continuous", 20, None, 60.0),  # the default balancedIntervalSeconds
    ("continuous", 20, 300, 300.0),
    ("continuous", 90, 30, 90.0),  # never more often than stepIntervalSeconds
    ("postRollout", 20, 120, 120.0),
])
def test_a_balanced_pool_sleeps_for_the_balanced_interval(mode, step, balanced, wait):
    extra = {} if balanced is None else {"balance__balancedIntervalSeconds": balanced}
    world = World({"a": 100, "b": 100, "c": 100}, balance__mode=mode,
                  balance__stepIntervalSeconds=step, **extra)  # fmt: skip
    first = world.tick()
    assert (first.state.phase, first.requeue_after) == (Phase.BALANCED, wait)
    again = world.tick()  # judged already (postRollout) or balanced again (continuous)
    assert (again.state.phase, again.requeue_after) == (Phase.BALANCED, wait)


def test_a_pool_being_stepped_still_comes_back_after_its_cooldown():
    world = World({"a": 364, "b": 236, "c": 0}, balance__mode="continuous",
                  balance__balancedIntervalSeconds=600)  # fmt: skip
    result = world.tick()
    assert result.state.phase is Phase.REBALANCING
    assert result.requeue_after == 30  # windowSeconds 10 + stepIntervalSeconds 20
