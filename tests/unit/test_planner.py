"""Properties of the planner, over many pools (hypothesis), and the cases people ask about."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connbalance.model import PodLoad, PodName, PodState, Policy
from connbalance.planner import Landing, Verdict, expected_loads, plan
from connbalance.planner.plan import decide

NOW = 50_000.0


def snapshot(values: dict[str, float], *, not_ready: frozenset[str] = frozenset()):
    pods = [
        PodState(
            name=PodName(n),
            ready=n not in not_ready,
            ready_since=0.0 if n not in not_ready else None,
        )
        for n in values
    ]
    loads = {PodName(n): PodLoad(pod=PodName(n), load=v, timestamp=NOW) for n, v in values.items()}
    return loads, pods


def policy(**balance: object) -> Policy:
    steer = bool(balance.pop("steer", False))
    return Policy.from_spec(
        {
            "selector": {"matchLabels": {"app": "x"}},
            "balance": balance,
            "actuation": {"steer": steer},
        }
    )


pools = st.dictionaries(
    keys=st.sampled_from([f"pod-{i}" for i in range(8)]),
    values=st.integers(min_value=0, max_value=5000).map(float),
    min_size=2,
    max_size=8,
)
policies = st.builds(
    lambda tol, target_share, frac, per_pod, pool, steer: policy(
        tolerance=tol,
        targetTolerance=math.floor(tol * target_share * 1e4) / 1e4,
        maxFractionPerStep=frac,
        maxConnectionsPerStep=per_pod,
        maxPoolFractionPerStep=pool,
        steer=steer,
    ),
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=3000),
    st.floats(min_value=0.0, max_value=1.0),
    st.booleans(),
)


@given(pool=pools, pol=policies, engaged=st.booleans())
@settings(max_examples=400, deadline=None)
def test_no_cap_is_ever_exceeded(pool, pol, engaged):
    loads, pods = snapshot(pool)
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW, engaged=engaged)
    balance = pol.balance
    for drain in result.drains:
        assert drain.count >= 1 or pol.actuation.steer, "steer-only requests only when steering"
        assert drain.count <= math.floor(balance.max_fraction_per_step * pool[drain.pod])
        assert drain.count <= balance.max_connections_per_step
    assert result.total <= math.floor(balance.max_pool_fraction_per_step * sum(pool.values()))


@given(pool=pools, pol=policies, engaged=st.booleans())
@settings(max_examples=400, deadline=None)
def test_no_pod_is_pushed_below_the_mean(pool, pol, engaged):
    loads, pods = snapshot(pool)
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW, engaged=engaged)
    landing = Landing.STEERED if pol.actuation.steer else Landing.UNIFORM
    sheds = {d.pod: float(d.count) for d in result.drains}
    after = expected_loads({PodName(k): v for k, v in pool.items()}, sheds, landing=landing)
    for pod, count in sheds.items():
        if count:  # steer-only pods (count 0) keep what they hold
            assert pool[pod] > result.mean, "only pods above the mean shed"
            assert after[pod] >= result.mean - 1e-6


@given(pool=pools, pol=policies)
@settings(max_examples=400, deadline=None)
def test_never_acts_within_tolerance(pool, pol):
    loads, pods = snapshot(pool)
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW)
    if result.skew <= 1 + pol.balance.tolerance:
        assert not result.act
        assert result.drains == ()


@given(pool=pools, pol=policies)
@settings(max_examples=200, deadline=None)
def test_once_engaged_stops_within_the_target_tolerance(pool, pol):
    loads, pods = snapshot(pool)
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW, engaged=True)
    if result.skew <= 1 + pol.balance.target_tolerance:
        assert not result.act


@given(pool=pools, pol=policies, engaged=st.booleans(), seed=st.integers(0, 1000))
@settings(max_examples=200, deadline=None)
def test_the_same_input_gives_the_same_plan_in_any_order(pool, pol, engaged, seed):
    loads, pods = snapshot(pool)
    first = plan(loads=loads, pods=pods, policy=pol, now=NOW, engaged=engaged)
    shuffled = list(pods)
    random.Random(seed).shuffle(shuffled)
    again = plan(
        loads=dict(reversed(list(loads.items()))),
        pods=shuffled,
        policy=pol,
        now=NOW,
        engaged=engaged,
    )
    assert first == again


@given(pool=pools, pol=policies, engaged=st.booleans())
@settings(max_examples=400, deadline=None)
def test_the_expected_skew_after_a_plan_is_never_worse(pool, pol, engaged):
    loads, pods = snapshot(pool)
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW, engaged=engaged)
    if result.act:
        assert result.expected_skew is not None
        assert result.expected_skew < result.skew


@given(pool=pools, pol=policies, down=st.sets(st.sampled_from([f"pod-{i}" for i in range(8)])))
@settings(max_examples=200, deadline=None)
def test_pods_that_are_not_ready_are_never_drained_nor_counted(pool, pol, down):
    loads, pods = snapshot(pool, not_ready=frozenset(down))
    result = plan(loads=loads, pods=pods, policy=pol, now=NOW)
    assert not {d.pod for d in result.drains} & down
    ready = [v for k, v in pool.items() if k not in down]
    if len(ready) >= 2 and result.mean:
        assert result.mean == pytest.approx(sum(ready) / len(ready))


def test_acts_on_the_two_loaded_pods_and_leaves_the_idle_one_alone():
    loads, pods = snapshot({"a": 900, "b": 900, "c": 0})
    result = plan(loads=loads, pods=pods, policy=policy(), now=NOW)
    assert result.act
    assert {d.pod: d.count for d in result.drains} == {"a": 225, "b": 225}


def test_does_not_act_on_a_pool_within_tolerance():
    loads, pods = snapshot({"a": 600, "b": 610, "c": 590})
    result = plan(loads=loads, pods=pods, policy=policy(), now=NOW)
    assert not result.act
    assert "within" in result.reason


def test_a_single_shedding_pod_sheds_its_excess_times_n_over_n_minus_one():
    loads, pods = snapshot({"a": 300, "b": 150, "c": 150})
    wide_open = policy(maxFractionPerStep=1, maxPoolFractionPerStep=1, targetTolerance=0)
    result = plan(loads=loads, pods=pods, policy=wide_open, now=NOW)
    assert [(d.pod, d.count) for d in result.drains] == [("a", 150)]  # 100 * 3/2


def test_with_steering_each_cycled_connection_moves_once():
    loads, pods = snapshot({"a": 364, "b": 236, "c": 0})
    result = plan(
        loads=loads,
        pods=pods,
        now=NOW,
        policy=policy(maxFractionPerStep=1, maxPoolFractionPerStep=1, steer=True),
    )
    # the ceiling is halfway into the target band: 200 * 1.025 = 205
    assert {d.pod: d.count for d in result.drains} == {"a": 159, "b": 31}
    assert result.expected_skew == pytest.approx(1.025)


def test_steering_also_keeps_reconnects_off_full_pods_that_shed_nothing():
    # After a rolling restart of four: the last pod is empty, two sit near the mean.
    loads, pods = snapshot({"a": 23, "b": 21, "c": 20, "d": 16})
    result = plan(loads=loads, pods=pods, now=NOW, policy=policy(
        maxFractionPerStep=1, maxPoolFractionPerStep=1, steer=True, tolerance=0.1,
        targetTolerance=0.05), engaged=True)
    counts = {d.pod: d.count for d in result.drains}
    assert counts["a"] == 2
    assert counts.get("b") == 0, "b is above the mean: what a sheds must not land on it"
    assert "d" not in counts, "the emptiest pod takes the reconnects"
    assert result.expected_skew == pytest.approx(21 / 20)


def test_steering_moves_only_what_the_emptiest_receiver_has_room_for():
    loads, pods = snapshot({"a": 300, "b": 102, "c": 99, "d": 0})
    result = plan(loads=loads, pods=pods, now=NOW, policy=policy(
        maxFractionPerStep=1, maxPoolFractionPerStep=1, steer=True))
    # a's 171 spread over b, c and d would lift b to 159 and c to 156, over the ceiling of
    # 128.4, and the next step would cycle those clients again; d alone takes 128 of them.
    assert {d.pod: d.count for d in result.drains} == {"a": 128, "b": 0, "c": 0}


def test_a_rolling_restart_needs_more_than_its_excess_without_steering():
    loads, pods = snapshot({"a": 364, "b": 236, "c": 0})
    result = plan(
        loads=loads,
        pods=pods,
        now=NOW,
        policy=policy(maxFractionPerStep=1, maxPoolFractionPerStep=1),
    )
    assert result.needed == pytest.approx(200)
    assert 2.4 * 200 <= result.total <= 3 * 200
    assert result.expected_skew == pytest.approx(1.025, abs=0.01)


@pytest.mark.parametrize(
    ("values", "kwargs", "verdict"),
    [
        ({"a": 900}, {}, Verdict.TOO_FEW_PODS),
        ({"a": 5, "b": 0}, {}, Verdict.BELOW_MINIMUM),
        ({"a": 900, "b": 0}, {"maxConnectionsPerStep": 0}, Verdict.CAPPED),
    ],
)
def test_reasons_for_holding_back_are_named(values, kwargs, verdict):
    loads, pods = snapshot(values)
    result, found = decide(loads=loads, pods=pods, policy=policy(**kwargs), now=NOW)
    assert found is verdict
    assert not result.act
    assert result.reason


def test_waits_until_every_pod_has_been_ready_for_the_settle_time():
    loads, pods = snapshot({"a": 900, "b": 0})
    fresh = [PodState(name=p.name, ready=True, ready_since=NOW - 5) for p in pods]
    result, verdict = decide(loads=loads, pods=fresh, policy=policy(settleSeconds=30), now=NOW)
    assert verdict is Verdict.SETTLING
    assert "settleSeconds 30" in result.reason


def test_refuses_stale_loads():
    loads, pods = snapshot({"a": 900, "b": 0})
    old = {k: PodLoad(pod=v.pod, load=v.load, timestamp=NOW - 600) for k, v in loads.items()}
    result, verdict = decide(loads=old, pods=pods, policy=policy(), now=NOW)
    assert verdict is Verdict.STALE
    assert "maxStalenessSeconds" in result.reason


def test_a_ready_pod_without_a_load_blocks_the_plan():
    loads, pods = snapshot({"a": 900, "b": 0})
    del loads[PodName("b")]
    result, verdict = decide(loads=loads, pods=pods, policy=policy(), now=NOW)
    assert verdict is Verdict.MISSING_LOAD
    assert "b" in result.reason
