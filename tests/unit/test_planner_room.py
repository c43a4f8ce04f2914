"""Steered steps never lift a receiver above the ceiling, so each cycled connection moves once.

The over-shed the scenario matrix found (4 servers, 240 clients, 2 restarted: loads 35, 0, 101,
104, cycled/needed 1.21 to 1.43): the first step spread the two full pods' excess over both
emptier pods, which lifted the one at 35 to 75, above the mean of 60; the next step had to cycle
13 of those reconnected clients again, and the one after it 9 more. A step that moves only what
the receivers have room for moves every connection once, over the same number of steps.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connbalance.model import PodLoad, PodName, PodState, Policy
from connbalance.planner import Landing, expected_loads, plan

NOW = 50_000.0


def _snapshot(values: dict[str, float]) -> tuple[dict[PodName, PodLoad], list[PodState]]:
    pods = [PodState(name=PodName(n), ready=True, ready_since=0.0) for n in values]
    loads = {PodName(n): PodLoad(pod=PodName(n), load=v, timestamp=NOW) for n, v in values.items()}
    return loads, pods


def _steering(**balance: float) -> Policy:
    return Policy.from_spec({"selector": {"matchLabels": {"app": "x"}}, "balance": balance,
                             "actuation": {"steer": True}})


WIDE_OPEN = {"maxFractionPerStep": 1.0, "maxPoolFractionPerStep": 1.0}


def _episode(values: dict[str, float], policy: Policy) -> tuple[int, dict[str, float], int]:
    """Steps of the plan until it stops, each landing as the model expects: the connections
    cycled in all, the loads at the end and the steps taken."""
    cycled, steps = 0, 0
    for steps in range(1, 100):
        loads, pods = _snapshot(values)
        result = plan(loads=loads, pods=pods, policy=policy, now=NOW, engaged=steps > 1)
        if not result.act:
            return cycled, values, steps - 1
        sheds = {d.pod: float(d.count) for d in result.drains}
        cycled += sum(d.count for d in result.drains)
        after = expected_loads({PodName(k): v for k, v in values.items()}, sheds,
                               landing=Landing.STEERED)
        values = {str(k): v for k, v in after.items()}
    raise AssertionError("the episode did not end in 100 steps")


def test_the_rolling_restart_of_two_of_four_is_balanced_cycling_each_connection_once():
    before = {"a": 35.0, "b": 0.0, "c": 101.0, "d": 104.0}
    cycled, after, steps = _episode(before, _steering(maxFractionPerStep=0.5,
                                                      maxPoolFractionPerStep=0.5))
    needed = sum(v - 60 for v in before.values() if v > 60)  # 85
    assert cycled <= needed
    assert max(after.values()) / 60 <= 1.05
    assert steps <= 3


def test_the_first_step_fills_the_emptiest_pod_instead_of_overfilling_the_one_at_35():
    loads, pods = _snapshot({"a": 35.0, "b": 0.0, "c": 101.0, "d": 104.0})
    result = plan(loads=loads, pods=pods, policy=_steering(maxFractionPerStep=0.5,
                                                           maxPoolFractionPerStep=0.5), now=NOW)
    counts = {d.pod: d.count for d in result.drains}
    assert counts["a"] == 0, "a is steered off: the reconnects would lift it over the ceiling"
    assert "b" not in counts, "b takes them all"
    # b's room up to the ceiling of 61.5, split between c and d and each rounded down
    assert sum(counts.values()) in (60, 61)
    assert "room" in result.reason


def test_receivers_are_the_emptiest_pods_that_can_take_the_step_steering_off_the_fewest():
    from connbalance.planner.landing import receivers

    values = {PodName("a"): 35.0, PodName("b"): 0.0, PodName("c"): 50.0}
    # 20 fits on a and b together (each to 45 at most): no need to steer a off.
    both = receivers(values, {PodName("c"): 20.0}, ceiling=61.5)
    assert both.pods == {"a", "b"}
    assert both.room == pytest.approx(53.0)
    # 60 does not: b alone takes more (61.5) than a and b together (53).
    alone = receivers(values, {PodName("c"): 60.0}, ceiling=61.5)
    assert alone.pods == {"b"}
    assert alone.room == pytest.approx(61.5)


pools = st.dictionaries(
    keys=st.sampled_from([f"pod-{i}" for i in range(8)]),
    values=st.integers(min_value=0, max_value=3000).map(float),
    min_size=2,
    max_size=8,
)
caps = st.fixed_dictionaries({
    "maxFractionPerStep": st.floats(min_value=0.2, max_value=1.0),
    "maxPoolFractionPerStep": st.floats(min_value=0.2, max_value=1.0),
})


@given(pool=pools, balance=caps, engaged=st.booleans())
@settings(max_examples=400, deadline=None)
def test_no_receiver_is_expected_above_the_ceiling(pool, balance, engaged):
    loads, pods = _snapshot(pool)
    policy = _steering(**balance)
    result = plan(loads=loads, pods=pods, policy=policy, now=NOW, engaged=engaged)
    if not result.act:
        return
    sheds = {d.pod: float(d.count) for d in result.drains}
    after = expected_loads({PodName(k): v for k, v in pool.items()}, sheds,
                           landing=Landing.STEERED)
    ceiling = result.mean * (1 + policy.balance.target_tolerance / 2)
    for pod, load in after.items():
        if pod not in sheds:
            assert load <= ceiling + 1e-6, f"{pod} would end at {load:.1f} over {ceiling:.1f}"


@given(pool=pools, balance=caps)
@settings(max_examples=200, deadline=None)
def test_an_episode_cycles_no_more_than_the_excess_over_the_mean(pool, balance):
    cycled, _, _ = _episode(pool, _steering(**balance))
    mean = sum(pool.values()) / len(pool)
    excess = sum(v - mean for v in pool.values() if v > mean)
    assert cycled <= math.ceil(excess + 1e-6)
