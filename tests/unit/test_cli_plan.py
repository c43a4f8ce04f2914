"""``connbalance plan`` offline: good input, bad input, exit codes, output shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connbalance.cli import main

POOL = {
    "pods": [
        {"name": "a", "load": 900, "ready": True},
        {"name": "b", "load": 900, "ready": True},
        {"name": "c", "load": 0, "ready": True},
    ]
}


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def plan_json(capsys, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_acts_on_the_loaded_pods_within_the_default_caps(tmp_path, capsys):
    out = plan_json(capsys, "--loads", str(write(tmp_path, "l.json", POOL)))
    assert out["act"] is True
    assert {d["pod"] for d in out["drains"]} == {"a", "b"}
    assert all(d["count"] <= 0.25 * 900 for d in out["drains"])
    assert set(out) == {"mean", "skew", "act", "reason", "drains"}
    assert out["mean"] == 600
    assert out["skew"] == 1.5


def test_holds_when_the_pool_is_within_tolerance(tmp_path, capsys):
    pool = {
        "pods": [
            {"name": n, "load": v, "ready": True} for n, v in (("a", 600), ("b", 610), ("c", 590))
        ]
    }
    out = plan_json(capsys, "--loads", str(write(tmp_path, "l.json", pool)))
    assert out["act"] is False
    assert out["drains"] == []


def test_the_policy_file_changes_the_decision(tmp_path, capsys):
    manifest = """
apiVersion: connbalance.io/v1alpha1
kind: ConnectionBalancer
metadata: {name: auth, namespace: teleport}
spec:
  selector: {matchLabels: {app.kubernetes.io/component: auth}}
  balance: {tolerance: 0.6, targetTolerance: 0.5}
"""
    out = plan_json(
        capsys,
        "--loads",
        str(write(tmp_path, "l.json", POOL)),
        "--policy",
        str(write(tmp_path, "p.yaml", manifest)),
    )
    assert out["act"] is False


def test_pods_that_are_not_ready_or_not_settled_hold_the_plan(tmp_path, capsys):
    pool = {"pods": [*POOL["pods"][:2], {"name": "c", "load": 0, "ready": True, "readySeconds": 3}]}
    out = plan_json(capsys, "--loads", str(write(tmp_path, "l.json", pool)))
    assert out["act"] is False
    assert "settleSeconds" in out["reason"]


def table_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by pod: ready, load, vs mean, cycle (continuation lines left out)."""
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")[1:-1]]
        if len(cells) >= 5 and cells[0]:
            rows[cells[0]] = cells[1:5]
    return rows


def test_the_table_has_a_row_per_pod_with_its_count_and_the_decision_below(tmp_path, capsys):
    pool = {
        "pods": [
            {"name": "auth-0", "load": 900, "ready": True},
            {"name": "auth-1", "load": 900, "ready": True},
            {"name": "auth-2", "load": 0, "ready": True},
            {"name": "auth-3", "load": 0, "ready": False},
        ]
    }
    assert main(["plan", "--loads", str(write(tmp_path, "l.json", pool))]) == 0
    out = capsys.readouterr().out
    assert table_rows(out) == {
        "auth-0": ["yes", "900", "1.50x", "225"],
        "auth-1": ["yes", "900", "1.50x", "225"],
        "auth-2": ["yes", "0", "0.00x", "0"],
        "auth-3": ["no", "0", "0.00x", "0"],
    }
    assert "mean 600.0   skew 1.500   act: skew 1.500 over 1.100: cycle 450 on 2 pod(s)" in out


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("{not json", "not valid json"),
        ({"nodes": []}, "pods"),
        ({"pods": [{"name": "a"}]}, "pods[0].load"),
        ({"pods": [{"name": "a", "load": "many"}]}, "pods[0].load"),
        ({"pods": [{"name": "a", "load": -1}]}, "pods[0].load"),
        ({"pods": [{"name": "a", "load": 1, "ready": "yes"}]}, "pods[0].ready"),
        ({"pods": [{"name": "a", "load": 1}, {"name": "a", "load": 2}]}, "pods[1].name"),
        ({"pods": [{"name": "a", "load": 1, "weight": 2}]}, "pods[0].weight"),
    ],
)
def test_bad_loads_exit_2_with_one_line_naming_file_and_field(tmp_path, capsys, content, field):
    path = write(tmp_path, "bad.json", content)
    assert main(["plan", "--loads", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert field in lines[0]


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ("kind: Deployment\nspec: {}\n", "kind"),
        (
            "kind: ConnectionBalancer\n"
            "spec: {selector: {matchLabels: {a: b}}, balance: {tolerance: -1}}\n",
            "spec.balance.tolerance",
        ),
        (
            "kind: ConnectionBalancer\n"
            "spec: {selector: {matchLabels: {a: b}}, balance: {tolerence: 1}}\n",
            "spec.balance.tolerence",
        ),
        ("kind: ConnectionBalancer\nspec: {balance: {}}\n", "spec.selector"),
        ("kind: [unclosed\n", "not valid yaml"),
    ],
)
def test_bad_policy_files_exit_2_naming_the_field(tmp_path, capsys, manifest, field):
    loads = write(tmp_path, "l.json", POOL)
    policy = write(tmp_path, "p.yaml", manifest)
    assert main(["plan", "--loads", str(loads), "--policy", str(policy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(policy) in err
    assert field in err


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["plan", "--loads", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_the_console_script_runs_as_installed(tmp_path):
    done = subprocess.run(
        [
            Path(sys.executable).parent / "connbalance",
            "plan",
            "--json",
            "--loads",
            str(write(tmp_path, "l.json", POOL)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["act"] is True
