"""``connbalance bench --quick --json``: the document's shape, and the fact it exists to show."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_bench_prints_one_well_formed_document_where_only_connbalance_balances(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "connbalance_sim.bench", "--quick", "--json",
         "--out", str(tmp_path), "--net", "127.0.8",
         # Side by side, as this test always ran them: it checks the document's shape and one
         # fact, and one at a time would take twice as long. The figures come from runs one
         # at a time (the bench's default).
         "--parallel", "7",
         "--strategies", "none,max-age,random-reconnect,piko,wazuh,connbalance,connbalance-steer"],
        capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(done.stdout)
    assert set(doc) == {"scenario", "results"}
    assert doc["scenario"]["servers"] == 3
    assert doc["scenario"]["restarts"] == 3
    # 60 clients ping every 2 s, as before the call rate scaled with the fleet.
    assert doc["scenario"]["ping_interval"] == 2.0
    results = {r["strategy"]: r for r in doc["results"]}
    assert list(results) == ["none", "max-age", "random-reconnect", "piko", "wazuh",
                             "connbalance", "connbalance-steer"]
    for r in doc["results"]:
        assert set(r) == {"strategy", "time_to_balance_s", "cycled", "needed", "cycled_ratio",
                          "failed_calls", "final_skew", "churn_when_balanced", "failed_by_cause",
                          "groups", "churn_within_tolerance", "cycled_again", "calls",
                          "failed_per_1000", "bound_time_s", "bound_cycled_steered",
                          "bound_cycled_uniform", "time_over_bound", "cycled_over_steered_bound",
                          "cycled_over_uniform_bound"}
        # Half the clients fail fast, half retry; the failures add up by group and by cause.
        assert set(r["groups"]) == {"retry", "failfast"}
        assert {g["clients"] for g in r["groups"].values()} == {30}
        assert set(r["failed_by_cause"]) == {"restart", "close_during_call", "refused_connect",
                                             "backoff", "deadline", "other"}
        assert sum(r["failed_by_cause"].values()) == r["failed_calls"] == sum(
            g["failed_calls"] for g in r["groups"].values())
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


def _doc(mode: str, *, cycled: int, go_clients: str = "") -> dict:
    return {
        "scenario": {"servers": 3, "clients": 30, "restarts": 3, "duration": 5.0, "seed": 1,
                     "agent_mode": mode, "go_clients": go_clients, "failfast": 0,
                     "machine": "a machine", "wall_seconds": 9.0,
                     "load_average": {"start": [1.5, 1.0, 1.0], "end": [2.25, 1.0, 1.0]}},
        "results": [{"strategy": "connbalance", "time_to_balance_s": 1.0, "cycled": cycled,
                     "needed": 10, "cycled_ratio": cycled / 10, "failed_calls": 0,
                     "final_skew": 1.05, "churn_when_balanced": 0}],
    }


def test_docs_keep_each_agent_modes_figures_so_a_reset_run_leaves_the_proxy_table(tmp_path):
    from connbalance_sim import benchdocs

    assert benchdocs.update(tmp_path, _doc("proxy", cycled=11)) == "proxy"
    assert benchdocs.update(tmp_path, _doc("reset", cycled=12)) == "reset"
    assert benchdocs.update(tmp_path, _doc("reset", cycled=13, go_clients="goclients")) == (
        "reset-go")
    assert benchdocs.update(tmp_path, _doc("reset", cycled=14)) == "reset"
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert list(stored) == ["proxy", "reset", "reset-go"]
    assert [stored[k]["results"][0]["cycled"] for k in stored] == [11, 14, 13]
    page = (tmp_path / "bench.md").read_text()
    sections = page.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "Agent in proxy mode", "Agent in reset mode", "Agent in reset mode, grpc-go clients"]
    assert "| connbalance | 1.0 s | 11 | 10 | 1.10 |" in sections[0]
    assert "| connbalance | 1.0 s | 14 | 10 | 1.40 |" in sections[1]
    assert "nftables" in sections[1]
    assert "load average 1.50 (1 min) at the start, 2.25 at the end" in sections[1]
    assert "(bench-reset.png)" in sections[1]
    assert "grpc-go clients (0 fail-fast" in sections[2]


def test_docs_carry_the_scenario_matrix_section_over_when_the_page_is_rewritten(tmp_path):
    from connbalance_sim import benchdocs

    benchdocs.update(tmp_path, _doc("proxy", cycled=11))
    page = tmp_path / "bench.md"
    page.write_text(page.read_text() + "\n## Scenario matrix\n\nthe matrix table\n")
    benchdocs.update(tmp_path, _doc("reset", cycled=12))
    text = page.read_text()
    assert text.count("## Scenario matrix") == 1
    assert text.endswith("\n## Scenario matrix\n\nthe matrix table\n")
    assert "| connbalance | 1.0 s | 12 | 10 | 1.20 |" in text


def test_docs_show_each_client_groups_failed_calls_and_keep_the_harm_section(tmp_path):
    from connbalance_sim import benchdocs

    doc = _doc("proxy", cycled=11)
    doc["results"][0].update(failed_calls=4, groups={"retry": {"failed_calls": 3},
                                                     "failfast": {"failed_calls": 1}})
    benchdocs.update(tmp_path, doc)
    page = tmp_path / "bench.md"
    assert "| 4 (fail-fast 1, retry 3) |" in page.read_text()
    page.write_text(page.read_text() + "\n## Harm to calls\n\nthe causes\n")
    benchdocs.update(tmp_path, _doc("reset", cycled=12))
    text = page.read_text()
    assert text.count("## Harm to calls") == 1
    assert text.endswith("\n## Harm to calls\n\nthe causes\n")


def test_docs_keep_the_section_on_3000_clients_between_the_matrix_and_the_harm(tmp_path):
    from connbalance_sim import benchdocs

    benchdocs.update(tmp_path, _doc("proxy", cycled=11))
    page = tmp_path / "bench.md"
    page.write_text(page.read_text() + "\n## Scenario matrix\n\nthe matrix\n"
                    "\n## At 5 servers and 3,000 clients\n\nat scale\n"
                    "\n## Harm to calls\n\nthe causes\n")
    benchdocs.update(tmp_path, _doc("reset", cycled=12))
    text = page.read_text()
    assert text.count("## At 5 servers and 3,000 clients") == 1
    assert text.endswith("\n## Scenario matrix\n\nthe matrix\n"
                         "\n## At 5 servers and 3,000 clients\n\nat scale\n"
                         "\n## Harm to calls\n\nthe causes\n")


def test_thousands_of_clients_are_spread_over_several_client_processes():
    from connbalance_sim.bench import parser, scenario_from

    small = scenario_from(parser().parse_args(["--clients", "300"]))
    large = scenario_from(parser().parse_args(["--servers", "5", "--clients", "3000"]))
    assert small.client_processes == 1
    assert large.client_processes == 5
    assert (large.clients, large.failfast) == (3000, 1500)
