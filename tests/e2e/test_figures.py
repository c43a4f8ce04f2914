"""docs/e2e.md is rendered from the rollout scenario's figures, machine and load beside them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.figures import main

FIGURES = {
    "scenario": "tests/e2e/test_operator_scenarios.py::test_rollout",
    "date": "2026-12-02 08:00 UTC",
    "machine": {"cpus": 2, "cpu_model": "Some CPU", "kernel": "6.1.0", "python": "3.11.2",
                "load_average": {"start": [3.5, 3.0, 2.0], "end": [4.25, 3.5, 2.5]}},
    "clients": {"total": 300, "failfast": 60, "retry": 240},
    "spec": {"balance": {"settleSeconds": 3, "stepIntervalSeconds": 3, "maxFractionPerStep": 0.5,
                         "maxPoolFractionPerStep": 0.5},
             "actuation": {"windowSeconds": 2}},
    "rollout_seconds": 14.2,
    "loads_after_rollout": {"a": 190, "b": 110, "c": 0},
    "skew_after_rollout": 1.9,
    "first_drain_seconds": 3.4,
    "balanced_seconds": 11.0,
    "steps": 2,
    "cycled": 96,
    "needed": 90,
    "loads_balanced": {"a": 101, "b": 99, "c": 100},
    "skew_balanced": 1.01,
    "operator_skew": 1.02,
    "spans_seconds": {"rollout": 20.0, "rebalancing": 15.0},
    "calls": {
        "operator": {
            "rollout": {"retry": {"calls_ok": 4000, "calls_failed": 3, "code:Canceled": 3},
                        "failfast": {"calls_ok": 1000, "calls_failed": 1, "code:Canceled": 1}},
            "rebalancing": {"retry": {"calls_ok": 3000, "calls_failed": 0},
                            "failfast": {"calls_ok": 700, "calls_failed": 12,
                                         "code:Unavailable": 12}},
        },
        "operator_stopped": {
            "rollout": {"retry": {"calls_ok": 4100, "calls_failed": 2, "code:Canceled": 2},
                        "failfast": {"calls_ok": 1000, "calls_failed": 0}},
            "rebalancing": {"retry": {"calls_ok": 3000, "calls_failed": 0},
                            "failfast": {"calls_ok": 750, "calls_failed": 0}},
        },
    },
}  # fmt: skip


def test_the_page_holds_each_figure_with_the_machine_and_its_load(tmp_path: Path) -> None:
    source, page = tmp_path / "e2e.json", tmp_path / "e2e.md"
    source.write_text(json.dumps(FIGURES))
    assert main([str(source), "--out", str(page)]) == 0
    text = page.read_text()
    prose = " ".join(text.split())  # paragraphs are wrapped at 100 columns
    assert "| time from the finished rollout to the first drain | 3.4 s |" in text
    assert "96 against 90 (ratio 1.07)" in text
    assert "| failfast | rebalancing | 12 of 712 | 0 of 750 | Unavailable 12; none |" in text
    assert "| retry | rollout | 3 of 4003 | 2 of 4102 | Canceled 3; Canceled 2 |" in text
    assert "load average 3.50/3.00/2.00 at the start and 4.25/3.50/2.50" in prose
    assert "2 CPUs (Some CPU)" in prose


def test_a_figures_file_missing_a_figure_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    source, page = tmp_path / "e2e.json", tmp_path / "e2e.md"
    source.write_text(json.dumps({k: v for k, v in FIGURES.items() if k != "cycled"}))
    assert main([str(source), "--out", str(page)]) == 2
    assert "'cycled'" in capsys.readouterr().err
    assert not page.exists()
