"""``connbalance bench --quick --json``: the document's shape, and the fact it exists to show."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_bench_prints_one_well_formed_document_where_only_connbalance_balances(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "connbalance_sim.bench", "--quick", "--json",
         "--out", str(tmp_path), "--net", "127.0.8",
         "--strategies", "none,max-age,random-reconnect,piko,wazuh,connbalance,connbalance-steer"],
        capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(done.stdout)
    assert set(doc) == {"scenario", "results"}
    assert doc["scenario"]["servers"] == 3
    assert doc["scenario"]["restarts"] == 3
    results = {r["strategy"]: r for r in doc["results"]}
    assert list(results) == ["none", "max-age", "random-reconnect", "piko", "wazuh",
                             "connbalance", "connbalance-steer"]
    for r in doc["results"]:
        assert set(r) == {"strategy", "time_to_balance_s", "cycled", "needed", "cycled_ratio",
                          "failed_calls", "final_skew", "churn_when_balanced"}
        assert r["time_to_balance_s"] is None or r["time_to_balance_s"] >= 0
        assert isinstance(r["cycled"], int)
        assert isinstance(r["needed"], int)
        assert r["cycled_ratio"] is None or r["cycled_ratio"] >= 0
        assert isinstance(r["failed_calls"], int)
        assert isinstance(r["churn_when_balanced"], int)
        assert r["final_skew"] >= 1.0
    # A rolling restart of every pod leaves the last one nearly empty, and nothing moves back.
    none = results["none"]
    assert none["needed"] > 0
    assert none["time_to_balance_s"] is None
    assert none["cycled"] == 0
    assert none["final_skew"] > 1.10
    connbalance = results["connbalance"]
    assert connbalance["time_to_balance_s"] is not None
    assert connbalance["final_skew"] <= 1.10
    assert connbalance["cycled"] >= 1
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == doc
