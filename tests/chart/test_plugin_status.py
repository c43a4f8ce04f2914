"""``kubectl connbalance status`` against a real API server, run by kubectl as a plugin.

The ConnectionBalancer's status is written through the status subresource, as the operator
writes it, and read back by `kubectl connbalance status` found on PATH by kubectl itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.helmrun import ROOT
from tests.cluster.cluster import Cluster

pytestmark = pytest.mark.cluster

STATUS = {
    "phase": "CoolingDown",
    "skew": 1.2345,
    "podCount": 2,
    "lastAction": "cycled 40 on auth-0",
    "pods": [
        {"name": "auth-0", "ready": True, "load": 140, "target": 100.0,
         "lastDrain": "cb.x.1.auth-0", "lastDrainRequested": 40, "lastDrainConfirmed": 38},
        {"name": "auth-1", "ready": True, "load": 60, "target": 100.0},
    ],
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Reconciling", "message": "",
         "lastTransitionTime": "2026-01-02T03:04:05Z"},
        {"type": "Converging", "status": "False", "reason": "NoImprovement",
         "message": "two steps without improvement", "lastTransitionTime": "2026-01-02T03:05:05Z"},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/connectionbalancers.connbalance.io",
    )  # fmt: skip


@pytest.fixture
def plugin_path(tmp_path: Path) -> str:
    """A PATH on which kubectl finds kubectl-connbalance, as a user's would after pip install."""
    found = shutil.which("kubectl-connbalance", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("no kubectl-connbalance beside the venv's python: reinstall (make venv)")
    return str(Path(found).parent)


def kubectl_connbalance(
    cluster: Cluster, plugin_path: str, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "PATH": f"{plugin_path}:{cluster.env['PATH']}"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    command = [str(cluster.kubectl), "connbalance", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def balancer(cluster: Cluster, namespace: str, crd: None) -> str:
    manifest = {
        "apiVersion": "connbalance.io/v1alpha1",
        "kind": "ConnectionBalancer",
        "metadata": {"name": "auth", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "auth"}}, "paused": True},
    }
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    cluster.run_kubectl(
        "patch", "connectionbalancer", "auth", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": STATUS}),
    )  # fmt: skip
    return "auth"


def test_status_shows_the_balancer_the_api_server_holds(cluster, namespace, balancer, plugin_path):
    done = kubectl_connbalance(cluster, plugin_path, "status", balancer, "-n", namespace)
    assert done.returncode == 0, done.stderr
    first, second, *rest = done.stdout.splitlines()
    assert first == f"ConnectionBalancer {namespace}/auth: phase CoolingDown (paused)"
    assert second == "skew 1.234, acts above 1.10; 2 pods", "the tolerance the API server defaulted"
    cells = [
        [c.strip() for c in line.split("│")] for line in rest if "│ " in line and "auth-0" in line
    ]
    assert cells == [
        ["auth-0", "yes", "140", "100", "1.40"],
        ["auth-0", "cb.x.1.auth-0", "40", "38", "-"],
    ]
    assert "NoImprovement" in done.stdout
    assert "2026-01-02T03:05:05Z" in done.stdout
    assert "two steps without improvement" in " ".join(done.stdout.split()).replace(" │", "")


def test_status_takes_the_namespace_of_the_current_context(
    cluster, namespace, balancer, plugin_path, tmp_path
):
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    current = config["current-context"]
    for context in config["contexts"]:
        if context["name"] == current:
            context["context"]["namespace"] = namespace
    other = {"name": "elsewhere", "context": {**config["contexts"][0]["context"], "namespace": "x"}}
    config["contexts"].append(other)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    done = kubectl_connbalance(cluster, plugin_path, "status", balancer, kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    assert f"{namespace}/auth" in done.stdout

    elsewhere = kubectl_connbalance(
        cluster, plugin_path, "status", balancer, "--context", "elsewhere", kubeconfig=kubeconfig
    )
    assert elsewhere.returncode == 1
    assert "not found in namespace 'x'" in elsewhere.stderr


def test_status_of_a_missing_balancer_fails_in_one_line(cluster, namespace, crd, plugin_path):
    done = kubectl_connbalance(cluster, plugin_path, "status", "nope", "-n", namespace)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"kubectl connbalance status: ConnectionBalancer 'nope' not found in namespace "
        f"'{namespace}'"
    )
