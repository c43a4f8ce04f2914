"""``connbalance plan --kubeconfig``: pods and readiness from the real API server of the test
cluster, loads from the cluster's Prometheus, which finds the pods by Kubernetes discovery.

The pods run the same exporter as the standalone tests, as their container's command, on the
pod's address and Teleport's diag port (3000).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from connbalance.kube.readiness import read_pods
from connbalance.ports import FleetError
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parents[2]
CONNBALANCE = Path(sys.executable).parent / "connbalance"
LABELS = {"app.kubernetes.io/component": "auth", "app.kubernetes.io/instance": "teleport"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())


def pod(name: str, namespace: str, state: Path, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "labels": LABELS,
            "annotations": {"prometheus.io/scrape": str(ready).lower(),
                            "prometheus.io/port": "3000"},
        },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "teleport",
                "image": "public.ecr.aws/gravitational/teleport-distroless:17",
                "command": ["python", "-m", "tests.prometheus.exporter", "--port", "3000",
                            "--state", str(state), "--lifetime", "600"],
                "workingDir": str(REPO),
                "ports": [{"name": "diag", "containerPort": 3000}],
                # A pod that never becomes Ready probes a port nothing listens on.
                "readinessProbe": {"httpGet": {"path": "/metrics", "port": 3000 if ready else 3001},
                                   "periodSeconds": 1},
            }],
        },
    }


def series(cluster: Cluster, promql: str) -> dict[str, str]:
    url = f"{cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return {s["metric"].get("pod", ""): s["value"][1]
                for s in json.load(answer)["data"]["result"]}


@pytest.fixture
def auth_pods(cluster: Cluster, namespace: str, tmp_path: Path) -> str:
    """auth-a, auth-b, auth-c Ready with 120, 118 and 2 connected resources; auth-d never Ready."""
    values = {"auth-a": {"node": 120}, "auth-b": {"node": 100, "kube": 18},
              "auth-c": {"node": 2}, "auth-d": {"node": 500}}
    items = []
    for name, resources in values.items():
        state = tmp_path / f"{name}.json"
        state.write_text(json.dumps({"resources": resources, "open_fds": 50}))
        items.append(pod(name, namespace, state, ready=name != "auth-d"))
    cluster.run_kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                               "items": items}))
    kubeconfig = str(cluster.kubeconfig)
    eventually(lambda: sum(p.ready for p in read_pods(kubeconfig=kubeconfig, namespace=namespace,
                                                      selector=tuple(LABELS.items()))) == 3,
               what="auth-a, auth-b and auth-c Ready")
    eventually(lambda: set(series(cluster, f'sum by (pod) (teleport_connected_resources'
                                           f'{{namespace="{namespace}"}})'))
               == {"auth-a", "auth-b", "auth-c"},
               what="Prometheus scraping the three Ready pods")
    return namespace


def plan(cluster: Cluster, namespace: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(CONNBALANCE), "plan", "--prometheus", cluster.prometheus_url, "--namespace",
         namespace, "--selector", SELECTOR, "--kubeconfig", str(cluster.kubeconfig), "--json",
         *extra],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_readiness_comes_from_the_api_server(
    cluster: Cluster, auth_pods: str, tmp_path: Path
) -> None:
    pods = {p.name: p for p in read_pods(kubeconfig=str(cluster.kubeconfig),
                                         namespace=auth_pods, selector=tuple(LABELS.items()))}
    assert sorted(pods) == ["auth-a", "auth-b", "auth-c", "auth-d"]
    assert not pods["auth-d"].ready
    for name in ("auth-a", "auth-b", "auth-c"):
        since = pods[name].ready_since
        assert pods[name].ready
        assert since is not None
        assert time.time() - 120 < since <= time.time()
    # Ready for seconds, not an hour: the plan waits (without --kubeconfig it would act).
    result = plan(cluster, auth_pods, "--policy", policy_file(tmp_path, settle=3600))
    assert result["act"] is False
    assert "settleSeconds 3600" in result["reason"]


def policy_file(directory: Path, *, settle: float) -> str:
    path = directory / "policy.yaml"
    path.write_text(json.dumps({
        "apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
        "metadata": {"name": "auth"},
        "spec": {"selector": {"matchLabels": LABELS}, "balance": {"settleSeconds": settle}},
    }))
    return str(path)


def test_a_settled_pool_is_planned_without_the_pod_that_is_not_ready(
    cluster: Cluster, auth_pods: str, tmp_path: Path
) -> None:
    result = plan(cluster, auth_pods, "--policy", policy_file(tmp_path, settle=0))
    assert result["act"] is True
    assert result["mean"] == pytest.approx(80)
    assert {d["pod"] for d in result["drains"]} == {"auth-a", "auth-b"}


def test_an_unusable_kubeconfig_is_a_fleet_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.kubeconfig"
    with pytest.raises(FleetError, match=str(missing)):
        read_pods(kubeconfig=str(missing), namespace="ns", selector=(("app", "x"),))
