"""The harm to calls, per group and cause, from the clients' report lines; and how the demo says
it. Pure: made-up report lines, no processes."""

from __future__ import annotations

from typing import Any

from connbalance_sim import harm, report
from connbalance_sim.measures import Record, Sample


def _line(**groups: dict[str, Any]) -> dict[str, Any]:
    return {"groups": groups}


def _group(*, ok: int, failed: int, causes: dict[str, int] | None = None, tf: int = 0,
           clients: int = 10) -> dict[str, Any]:
    return {"clients": clients, "calls_ok": ok, "calls_failed": failed,
            "failed_by_cause": causes or {}, "transient_failures": tf}


def test_failures_during_the_rollout_are_the_restarts_and_later_ones_keep_their_cause():
    # Two client processes, each with both groups.
    start = harm.snapshot([_line(retry=_group(ok=10, failed=1, causes={"backoff": 1})),
                           _line(failfast=_group(ok=10, failed=0))])
    finish = harm.snapshot([_line(retry=_group(ok=20, failed=3, causes={"backoff": 1,
                                                                        "close_during_call": 2})),
                            _line(failfast=_group(ok=18, failed=4, causes={"other": 4}))])
    end = harm.snapshot([_line(retry=_group(ok=30, failed=3, causes={"backoff": 1,
                                                                      "close_during_call": 2})),
                         _line(failfast=_group(ok=25, failed=9, tf=3,
                                               causes={"other": 4, "backoff": 4,
                                                       "refused_connect": 1}))])
    summary = harm.summary(at_start=start, at_finish=finish, at_end=end)
    retry, failfast = summary["groups"]["retry"], summary["groups"]["failfast"]
    assert retry["failed_calls"] == 2
    assert retry["failed_by_cause"] == {"restart": 2, "close_during_call": 0,
                                        "refused_connect": 0, "backoff": 0, "deadline": 0,
                                        "other": 0}
    assert failfast["failed_calls"] == 9
    assert failfast["failed_after_rollout"] == 5
    assert failfast["failed_by_cause"] == {"restart": 4, "close_during_call": 0,
                                           "refused_connect": 1, "backoff": 4, "deadline": 0,
                                           "other": 0}
    assert failfast["failed_connects_after_rollout"] == 3
    assert failfast["calls"] == (25 + 9) - (10 + 0)
    assert summary["failed_by_cause"] == {"restart": 6, "close_during_call": 0,
                                          "refused_connect": 1, "backoff": 4, "deadline": 0,
                                           "other": 0}
    assert harm.result(summary)["failed_by_cause"] == summary["failed_by_cause"]
    assert harm.result(None) == {}


def _record(harm_summary: dict[str, Any] | None, failed: int) -> Record:
    sample = Sample(t=0.0, loads={"a": 10.0, "b": 10.0})
    extra = {} if harm_summary is None else {"harm": harm_summary}
    return Record(strategy="connbalance", clients=20, samples=(sample,), events=(), cycled_at=(),
                  rollout_started=0.0, rollout_finished=0.0, ended=1.0, failed_calls=failed,
                  calls=100, extra=extra)


def test_the_demo_summary_names_the_causes_it_counted_largest_first_and_each_group():
    start = harm.snapshot([])
    finish = harm.snapshot([_line(failfast=_group(ok=40, failed=1))])
    end = harm.snapshot([_line(failfast=_group(ok=90, failed=8, tf=5,
                                               causes={"backoff": 5, "refused_connect": 2}),
                               retry=_group(ok=10, failed=0))])
    lines = report.summary(_record(harm.summary(at_start=start, at_finish=finish, at_end=end), 8))
    failed = next(line for line in lines if line.startswith("failed calls"))
    assert failed == ("failed calls        8 of 100 unary calls: 5 while the channel waited out "
                      "its reconnect backoff after a refused connect; 2 on a refused reconnect; "
                      "1 during the rollout (the restarts)")
    assert any("fail-fast:" in line and "8 of 98" in line and "5 failed connects" in line
               for line in lines)
    assert any("with the retry policy:" in line and "0 of 10" in line for line in lines)


def test_a_summary_without_counted_causes_blames_nothing():
    lines = report.summary(_record(None, 0))
    assert "failed calls        0 of 100 unary calls" in lines
