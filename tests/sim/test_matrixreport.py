"""The matrix's medians, spreads and goals, from hand-made runs."""

from __future__ import annotations

from connbalance_sim import matrixreport


def _run(strategy: str, *, ratio: float, ttb: float | None, churn: int = 0, seed: int = 1):
    return {"servers": 4, "restarts": "half", "clients": 300, "seed": seed,
            "strategy": strategy, "cycled_ratio": ratio, "time_to_balance_s": ttb,
            "churn_when_balanced": churn, "cycled": round(ratio * 100), "needed": 100}


def test_a_run_that_never_balanced_counts_as_the_slowest():
    runs = [_run("x", ratio=1.0, ttb=t, seed=s) for s, t in enumerate([5.0, None, None])]
    (entry,) = matrixreport.aggregate(runs)
    assert entry["balanced"] == 1
    assert entry["time_to_balance_s"] == {"median": None, "min": 5.0, "max": None}


def test_goals_compare_connbalance_with_peers_that_balance_and_not_with_none():
    runs = [_run("connbalance", ratio=1.02, ttb=5.0), _run("connbalance", ratio=1.04, ttb=6.0,
                                                           seed=2),
            _run("none", ratio=0.0, ttb=None), _run("piko", ratio=0.3, ttb=None),
            _run("wazuh", ratio=1.2, ttb=9.0)]
    (goal,) = matrixreport.goals(runs)
    assert goal["met"], goal["misses"]
    # Its own variants are shown beside it, not held against it.
    runs.append(_run("connbalance-steer", ratio=0.95, ttb=5.0))
    assert matrixreport.goals(runs)[0]["met"]
    runs.append(_run("max-age", ratio=0.97, ttb=8.0))
    runs.append(_run("connbalance", ratio=1.1, ttb=5.0, churn=3, seed=3))
    (goal,) = matrixreport.goals(runs)
    assert goal["misses"] == ["max-age cycles less (0.97 against 1.04)",
                              "churn when balanced up to 3"]
