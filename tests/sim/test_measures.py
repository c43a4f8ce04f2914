"""The bench's figures, from hand-made records."""

from __future__ import annotations

from connbalance_sim import measures
from connbalance_sim.measures import Event, Record, Sample


def _record(loads: list[tuple[float, list[float]]], *, cycled_at: tuple[float, ...] = (),
            rollout: tuple[float, float] = (0.0, 10.0), clients: int = 300,
            events: tuple[Event, ...] = ()) -> Record:
    samples = tuple(Sample(t=t, loads={f"p{i}": v for i, v in enumerate(values)})
                    for t, values in loads)
    return Record(strategy="x", clients=clients, samples=samples, events=events,
                  cycled_at=cycled_at, rollout_started=rollout[0], rollout_finished=rollout[1],
                  ended=samples[-1].t, failed_calls=0, calls=0)


def test_needed_is_the_load_above_the_mean_once_every_client_is_back():
    record = _record([(10.0, [150, 100, 0]), (11.0, [180, 120, 0]), (12.0, [180, 120, 0])])
    assert measures.needed(record) == 100  # at t=11, when all 300 are back: 80 + 20 over 100


def test_time_to_balance_counts_from_the_rollout_to_the_last_time_skew_went_under_the_bound():
    record = _record([(10.0, [200, 100, 0]), (12.0, [120, 100, 80]), (14.0, [130, 100, 70]),
                      (16.0, [105, 100, 95]), (18.0, [108, 100, 92])])
    assert measures.time_to_balance(record) == 6.0


def test_time_to_balance_is_none_when_the_run_ends_skewed():
    record = _record([(10.0, [200, 100, 0]), (12.0, [100, 100, 100]), (14.0, [150, 100, 50])])
    assert measures.time_to_balance(record) is None


def test_churn_when_balanced_counts_closes_after_a_balanced_sample_outside_the_rollout():
    record = _record([(10.0, [200, 100, 0]), (12.0, [100, 100, 100]), (14.0, [100, 100, 100])],
                     cycled_at=(5.0, 11.0, 12.5, 13.0))
    assert measures.churn_when_balanced(record) == 2
    assert measures.cycled(record) == 4


def test_result_has_the_documented_fields():
    record = _record([(10.0, [200, 100, 0]), (12.0, [100, 100, 100])], cycled_at=(11.0,))
    result = measures.result(record)
    assert set(result) == {"strategy", "time_to_balance_s", "cycled", "needed", "cycled_ratio",
                           "failed_calls", "final_skew", "churn_when_balanced",
                           "churn_within_tolerance", "cycled_again", "calls", "failed_per_1000"}
    assert result["cycled_ratio"] == round(1 / 100, 2)


def test_churn_follows_the_controllers_hysteresis_balanced_again_only_at_1_05():
    # Skewed, then 1.08 (under 1.10 but not yet 1.05: still being worked on), then 1.03, and
    # back at 1.08 (balanced still: the controller acts only over 1.10).
    record = _record([(10.0, [200, 100, 0]), (12.0, [108, 100, 92]), (14.0, [103, 100, 97]),
                      (16.0, [108, 100, 92])], cycled_at=(11.0, 12.5, 14.5, 16.5))
    assert measures.churn_when_balanced(record) == 2  # 14.5 and 16.5
    assert measures.churn_within_tolerance(record) == 3  # 12.5, 14.5 and 16.5


def test_a_close_belongs_to_the_decision_before_it_and_counts_as_churn_only_if_that_was_balanced():
    # Skewed at 12 (1.20): a drain then is work, even for the closes made after the pool read
    # 1.03 at 14. Balanced at 16 (1.03 still): a drain then is churn, and so is a close that no
    # decision ordered (a client dropping its own connection is judged at its own time).
    samples = [(10.0, [200, 100, 0]), (12.0, [120, 100, 80]), (14.0, [103, 100, 97]),
               (16.0, [103, 100, 97]), (20.0, [103, 100, 97])]
    events = (Event(t=12.5, kind="drain", pod="p0", text="drain p0: 3", count=3),
              Event(t=13.0, kind="phase", pod="", text="phase Rebalancing"),
              Event(t=16.5, kind="drain", pod="p0", text="drain p0: 1", count=1))
    record = _record(samples, cycled_at=(13.0, 14.5, 15.5, 17.0), events=events)
    assert measures.churn_when_balanced(record) == 1  # 17.0, ordered at 16.5
    assert measures.churn_within_tolerance(record) == 3  # 14.5, 15.5 and 17.0, by their time
    undecided = _record(samples, cycled_at=(13.0, 14.5, 17.0))
    assert measures.churn_when_balanced(undecided) == 2  # 14.5 and 17.0, by their own time


def test_a_connection_cycled_twice_is_one_opened_after_the_rollout():
    samples = [(10.0, [200, 100, 0]), (12.0, [100, 100, 100])]
    record = _record(samples, cycled_at=(11.0, 11.5, 12.0))
    moved = Record(**{**{f: getattr(record, f) for f in record.__dataclass_fields__},
                      "cycled_opened_at": (2.0, 10.5, 11.2)})
    assert measures.cycled_again(moved) == 2


def test_failed_calls_are_counted_per_thousand_calls():
    record = _record([(10.0, [200, 100, 0])])
    rated = Record(**{**{f: getattr(record, f) for f in record.__dataclass_fields__},
                      "failed_calls": 3, "calls": 1500})
    assert measures.failed_per_1000(rated) == 2.0
    assert measures.failed_per_1000(record) is None
