"""``kubectl connbalance``: plan delegates to ``connbalance plan``; status reads one screen from a
ConnectionBalancer's status; the context and namespace come from the kubeconfig as kubectl's do.

Against a real API server: tests/chart/test_plugin_status.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from connbalance.cli import main as connbalance_main
from connbalance.cli.errors import CliError
from connbalance.cli.kubectl_plugin import (
    Drain,
    context_namespace,
    last_drain,
    main,
    render_status,
)

BALANCER = {
    "apiVersion": "connbalance.io/v1alpha1",
    "kind": "ConnectionBalancer",
    "metadata": {"name": "auth", "namespace": "teleport"},
    "spec": {"balance": {"tolerance": 0.1}, "dryRun": True},
    "status": {
        "phase": "Rebalancing",
        "skew": 1.4321,
        "podCount": 3,
        "lastAction": "cycle 120 on auth-0",
        "reason": "skew 1.432 over 1.100",
        "pods": [
            {
                "name": "auth-0",
                "ready": True,
                "load": 300,
                "target": 200.0,
                "lastDrain": "cb.e1.2.auth-0",
                "lastDrainRequested": 120,
                "lastDrainConfirmed": 97,
            },
            {"name": "auth-1", "ready": True, "load": 250, "target": 200.0},
            {"name": "auth-2", "ready": False, "load": 50},
        ],
        "conditions": [
            {"type": "Converging", "status": "True", "reason": "Improving"},
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciling",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            },
            {"type": "Balanced", "status": "False", "reason": "Skewed", "message": "1.43 > 1.10"},
        ],
    },
}


def screen(body: dict) -> str:
    out = io.StringIO()
    render_status(body, Console(file=out, width=140, color_system=None))
    return out.getvalue()


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """Each table row's cells, by (table title, first cell)."""
    found: dict[tuple[str, str], list[str]] = {}
    title = ""
    for line in text.splitlines():
        if "│" not in line and "─" not in line:
            title = line.strip()
        elif "│" in line:
            cells = [c.strip() for c in line.split("│")]
            found[(title.split(":")[0].split(" ")[0], cells[0])] = cells
    return found


def test_status_shows_phase_skew_and_the_threshold_it_acts_above():
    first, second, *rest = screen(BALANCER).splitlines()
    assert first == "ConnectionBalancer teleport/auth: phase Rebalancing (dry run)"
    assert second == "skew 1.432, acts above 1.10; 3 pods"
    assert "last action: cycle 120 on auth-0" in rest


def test_status_shows_each_pods_load_against_its_target():
    found = rows(screen(BALANCER))
    assert found[("load", "auth-0")] == ["auth-0", "yes", "300", "200", "1.50"]
    assert found[("load", "auth-2")] == ["auth-2", "no", "50", "-", "-"]


def test_status_shows_the_last_drains_with_requested_and_confirmed_counts():
    found = rows(screen(BALANCER))
    assert found[("last", "auth-0")] == ["auth-0", "cb.e1.2.auth-0", "120", "97", "-"]
    assert ("last", "auth-1") not in found, "a pod never drained has no row"


def test_status_fits_80_columns():
    out = io.StringIO()
    render_status(BALANCER, Console(file=out, width=80, color_system=None))
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80
    assert rows(out.getvalue())[("last", "auth-0")][1] == "cb.e1.2.auth-0"


def test_status_lists_the_conditions_in_their_usual_order():
    text = screen(BALANCER)
    conditions = text[text.index("conditions") :]
    assert conditions.index("Ready") < conditions.index("Balanced") < conditions.index("Converging")
    assert "2026-01-02T03:04:05Z" in conditions
    assert "1.43 > 1.10" in conditions


def test_status_fits_one_screen():
    assert len(screen(BALANCER).splitlines()) <= 24


def test_a_balancer_without_status_says_so():
    text = screen({**BALANCER, "status": {}})
    assert "no status yet" in text


@pytest.mark.parametrize(
    ("pod", "drain"),
    [
        ({"lastDrain": "cb.e.1.a"}, Drain(id="cb.e.1.a")),
        (
            {"lastDrain": "cb.e.1.a", "lastDrainRequested": 5, "lastDrainConfirmed": 4},
            Drain(id="cb.e.1.a", requested=5, confirmed=4),
        ),
        (
            {"lastDrain": {"id": "cb.e.1.a", "requested": 5, "confirmed": 0, "at": "t"}},
            Drain(id="cb.e.1.a", requested=5, confirmed=0, at="t"),
        ),
        ({}, None),
        ({"lastDrain": {}}, None),
    ],
)
def test_a_pods_last_drain_reads_from_either_shape(pod, drain):
    assert last_drain(pod) == drain


def kubeconfig(tmp_path: Path, *, current: str, namespaces: dict[str, str | None]) -> Path:
    contexts = [
        {
            "name": name,
            "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
        }
        for name, ns in namespaces.items()
    ]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": contexts,
        "current-context": current,
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_namespace_is_the_current_contexts_as_kubectl_takes_it(tmp_path):
    path = str(kubeconfig(tmp_path, current="ops", namespaces={"ops": "teleport", "dev": None}))
    assert context_namespace(kubeconfig=path, context=None) == "teleport"
    assert context_namespace(kubeconfig=path, context="dev") == "default"
    with pytest.raises(CliError, match="--context"):
        context_namespace(kubeconfig=path, context="nope")


def test_status_with_an_unreadable_kubeconfig_fails_in_one_line(tmp_path, capsys):
    assert main(["status", "auth", "--kubeconfig", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("kubectl connbalance status: --kubeconfig")


def test_status_against_an_unreachable_server_says_so(tmp_path, capsys):
    path = kubeconfig(tmp_path, current="ops", namespaces={"ops": "teleport"})
    assert main(["status", "auth", "--kubeconfig", str(path)]) == 3
    assert "cannot reach the API server" in capsys.readouterr().err


def test_plan_is_connbalance_plan(tmp_path, capsys):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"pods": [{"name": "a", "load": 900}, {"name": "b", "load": 0}]}))
    assert main(["plan", "--loads", str(pool), "--json"]) == 0
    through_kubectl = capsys.readouterr().out
    assert connbalance_main(["plan", "--loads", str(pool), "--json"]) == 0
    assert through_kubectl == capsys.readouterr().out
    assert json.loads(through_kubectl)["act"] is True


def test_plan_takes_kubectls_namespace_flag(capsys):
    # The live form needs --prometheus too: the message shows -n arrived as --namespace.
    assert main(["plan", "-n", "teleport", "--selector", "a=b"]) == 2
    assert "--prometheus" in capsys.readouterr().err
    assert main(["plan", "--prometheus", "http://127.0.0.1:1", "--selector", "a=b"]) == 2
    assert "--namespace: required" in capsys.readouterr().err
