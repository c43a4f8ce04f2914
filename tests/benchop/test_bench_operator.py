"""``make bench-operator`` on its smallest case: it runs to the end on a cluster of its own and
prints one well-formed document. Its figures are judged in docs/bench.md, never here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def test_the_operator_bench_prints_one_document_with_every_figure(tmp_path):
    if not os.environ.get("CONNBALANCE_HELM"):
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchop.run", "--sizes", "1x3", "--steady-seconds", "15",
         "--rollouts", "1", "--docs", str(tmp_path / "page.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["bench"] == "operator"
    (run,) = doc["runs"]
    assert (run["balancers"], run["pods_per_balancer"]) == (1, 3)
    for phase in ("balanced", "rebalancing"):
        figures = run[phase]
        assert figures["api_requests_per_minute"] > 0, "the audit log recorded the operator"
        assert figures["rss_mib"] > 10
    # A balanced pool is looked at every balancedIntervalSeconds (60 s), maybe never in the
    # 15 s balanced here: only the rebalancing window surely ticks.
    assert run["balanced"]["reconciles"] >= 0
    assert run["rebalancing"]["reconciles"] > 0
    assert run["rebalancing"]["promql_queries"] > 0
    assert run["rebalancing"]["connections_moved_by_drains"] > 0
    # What was written while rebalancing is told apart: the one balancer, and its drain Events.
    assert run["rebalancing"]["balancers_whose_status_was_patched"] == 1
    assert run["rebalancing"]["events_by_reason"].get("DrainRequested", 0) > 0
    delay = run["rollout_to_first_drain_seconds"]
    assert delay["drained"] == 1
    assert delay["p50"] > 0
    assert set(run["goals_met"]) == set(doc["goals"])
    assert doc["machine"]["cpus"] > 0
    assert json.loads((tmp_path / "page.json").read_text()) == doc
    page = (tmp_path / "page.md").read_text()
    assert "| balancers x pods | 1 x 3 |" in page
    assert "PromQL queries per tick, balanced" in page
