"""``connbalance bench --matrix`` on a tiny grid: it runs, and its document is well formed.

No figure is judged here (the matrix is a benchmark, not a test); the shape is what the docs
and other tools read.
"""

from __future__ import annotations

import json
import subprocess
import sys

RUN_KEYS = {"servers", "restarts", "restarted", "clients", "seed", "strategy",
            "time_to_balance_s", "cycled", "needed", "cycled_ratio", "failed_calls", "calls",
            "failed_per_1000", "final_skew", "churn_when_balanced", "churn_within_tolerance",
            "cycled_again", "bound_time_s", "bound_cycled_steered", "bound_cycled_uniform",
            "time_over_bound", "cycled_over_steered_bound", "cycled_over_uniform_bound"}


def test_a_one_cell_matrix_prints_one_document_with_its_runs_cells_and_goals(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "connbalance_sim.bench", "--matrix", "--quick", "--json",
         "--servers", "3", "--clients", "30", "--restarts", "3", "--duration", "2",
         "--strategies", "none,connbalance", "--out", str(tmp_path), "--net", "127.0.12"],
        capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(done.stdout)
    assert set(doc) == {"matrix", "runs", "cells", "goals", "failed_runs"}
    assert doc["failed_runs"] == 0
    meta = doc["matrix"]
    assert meta["runs_planned"] == 2
    assert meta["grid"]["servers"] == [3]
    assert meta["grid"]["clients"] == [30]
    assert meta["timing"]["duration"] == 2
    assert len(meta["load_average"]["start"]) == 3
    assert [r["strategy"] for r in doc["runs"]] == ["none", "connbalance"]
    for run in doc["runs"]:
        assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
        assert (run["servers"], run["restarted"], run["clients"], run["seed"]) == (3, 3, 30, 1)
        assert run["needed"] > 0
        assert run["bound_time_s"] == 2.6  # settle 1 + a 0.5 s sample + window 1 + 0.1 s
        assert run["bound_cycled_uniform"] >= run["bound_cycled_steered"] > 0
    assert doc["runs"][0]["cycled"] == 0  # none cycles nothing
    cells = {c["strategy"]: c for c in doc["cells"]}
    assert set(cells) == {"none", "connbalance"}
    for cell in cells.values():
        assert cell["runs"] == 1
        assert 0 <= cell["balanced"] <= 1
        assert set(cell["cycled_ratio"]) == {"median", "min", "max"}
    assert cells["none"]["time_to_balance_s"]["median"] is None  # never: no strategy
    assert [(g["servers"], g["clients"]) for g in doc["goals"]] == [(3, 30)]
    assert isinstance(doc["goals"][0]["met"], bool)
    assert json.loads((tmp_path / "matrix.json").read_text()) == doc
    assert "| 3 / 3 / 30 | connbalance |" in (tmp_path / "matrix.md").read_text()
