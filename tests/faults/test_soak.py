"""The soak's tiny run (one rolling restart) in `make test`: its JSON document is well formed,
with every figure `make soak` reports. The figures themselves are for `make soak` to judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster
from tests.faults.soak import TARGET_TOLERANCE, TOLERANCE, trigger_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def test_one_rollout_of_the_soak_prints_every_figure(cluster: Cluster, crd: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.soak", "--rollouts", "1",
         "--cluster-run", str(cluster.run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["rollouts"] == 1
    assert report["actions"] == {"rollout": 1, "churn": 0, "delete": 0}
    balance = report["time_to_balance_s"]
    assert balance["count"] + balance["timeouts"] == 2  # the start, then the rollout
    for key in ("p50", "p95", "max"):
        assert balance[key] is None or balance[key] >= 0
    for key in ("cycled", "drains", "drains_while_balanced", "failed_calls", "calls"):
        assert isinstance(report[key], int)
        assert report[key] >= 0
    assert report["calls"] > 0, "the clients made calls"
    assert report["needed"] >= 0
    detail = report["drains_while_balanced_detail"]
    assert len(detail) == report["drains_while_balanced"]
    for drain in detail:  # each one counted carries what explains it
        assert set(drain) == {"id", "step", "trigger", "count", "skews_before"}, drain
    assert report["operator_rss_mib"]["start"] > 0
    assert report["operator_rss_mib"]["end"] > 0
    assert report["api_requests_per_minute"] > 0
    assert len(report["load_average"]["start"]) == 3


def test_a_later_step_is_judged_by_target_tolerance_and_the_first_by_tolerance() -> None:
    assert trigger_for("cb.3f2a9c1e.1.auth-0") == (1, 1 + TOLERANCE)
    assert trigger_for("cb.3f2a9c1e.4.auth-0") == (4, 1 + TARGET_TOLERANCE)
    assert trigger_for("cb.3f2a9c1e.12.auth-0.x") == (12, 1 + TARGET_TOLERANCE)
