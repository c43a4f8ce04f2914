"""The bench's lower bounds: the unsteered fixed point solved exactly, and the time bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connbalance_sim.bounds import (
    excess,
    residual,
    time_bound,
    uniform_fixed_point,
)
from connbalance_sim.bounds import (
    result as bounds_result,
)


def test_the_design_notes_rolling_restart_of_three_needs_480_without_steering():
    # Loads 364, 236, 0 (mean 200): to 1.10 x mean the two full pods shed 480, 2.4 x the excess.
    assert uniform_fixed_point([364, 236, 0], ceiling=220) == pytest.approx(480)
    assert excess([364, 236, 0]) == pytest.approx(200)


def test_one_full_pod_sheds_its_excess_times_n_over_n_minus_one():
    assert uniform_fixed_point([300, 150, 150], ceiling=200) == pytest.approx(150)


def test_a_pool_already_under_the_ceiling_needs_nothing():
    assert uniform_fixed_point([105, 100, 95], ceiling=110) == 0.0


def test_a_ceiling_at_the_mean_cycles_every_pod_down_to_it():
    assert uniform_fixed_point([364, 236, 0], ceiling=200) == pytest.approx(600)


def test_a_ceiling_under_the_mean_is_refused_naming_it():
    with pytest.raises(ValueError, match="ceiling 150 is under the mean 200"):
        uniform_fixed_point([364, 236, 0], ceiling=150)


pools = st.lists(st.integers(min_value=0, max_value=5000).map(float), min_size=2, max_size=12)


@given(loads=pools, over=st.floats(min_value=0.001, max_value=1.0))
@settings(max_examples=500, deadline=None)
def test_the_solution_is_the_least_fixed_point(loads, over):
    mean = sum(loads) / len(loads)
    ceiling = mean * (1 + over) if mean > 0 else 1.0
    s = uniform_fixed_point(loads, ceiling=ceiling)
    scale = max(1.0, sum(loads))
    assert abs(residual(loads, ceiling=ceiling, shed=s)) <= 1e-9 * scale
    # Least: below it, f(S) stays above S (f(S) - S is falling and crosses 0 at s).
    for below in (0.0, s * 0.5, s * 0.999):
        if below < s - 1e-9 * scale:
            assert residual(loads, ceiling=ceiling, shed=below) > 0
    # Never less than the steered bound, the excess over the ceiling.
    assert s >= sum(max(0.0, v - ceiling) for v in loads) - 1e-9 * scale


def test_the_time_bound_adds_its_four_parts_and_refuses_a_negative_one():
    bound = time_bound(settle=1.0, measurement=0.5, window=1.0, reconnect=0.1)
    assert bound.seconds == pytest.approx(2.6)
    with pytest.raises(ValueError, match="window must be 0 or more"):
        time_bound(settle=1.0, measurement=0.5, window=-1.0, reconnect=0.1)


def test_a_runs_figures_are_given_as_ratios_to_both_bounds():
    from connbalance_sim.measures import Record, Sample
    from connbalance_sim.scenario import Scenario

    samples = (Sample(t=10.0, loads={"a": 364, "b": 236, "c": 0}),
               Sample(t=14.0, loads={"a": 205, "b": 200, "c": 195}))
    record = Record(strategy="x", clients=600, samples=samples, events=(),
                    cycled_at=tuple(11.0 + i / 1000 for i in range(240)),
                    rollout_started=0.0, rollout_finished=10.0, ended=14.0, failed_calls=0,
                    calls=0)
    scenario = Scenario(settle=1.0, window=1.0, sample_interval=0.5, backoff_ms=100)
    figures = bounds_result(record, scenario)
    assert figures["bound_time_s"] == pytest.approx(2.6)
    assert figures["time_over_bound"] == pytest.approx(round(4.0 / 2.6, 2))
    assert figures["bound_cycled_steered"] == pytest.approx(200)
    assert figures["bound_cycled_uniform"] == pytest.approx(480)
    assert figures["cycled_over_steered_bound"] == pytest.approx(1.2)
    assert figures["cycled_over_uniform_bound"] == pytest.approx(0.5)
