"""``connbalance run`` against the real API server: a loop per balancer that writes status only
when it changes, posts a repeated Warning once, honours both ways of pausing, and leaves nothing
for a person to unstick when a balancer is deleted while the operator is away."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: auth, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: auth}}}}
  template:
    metadata: {{labels: {{app: auth}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: server, image: idle, command: [python, -c, "import time; time.sleep(3600)"]}}
"""


def balancer(namespace: str, *, annotations: dict[str, str] | None = None,
             finalizers: list[str] | None = None, **spec: Any) -> str:
    meta: dict[str, Any] = {"name": "auth", "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    if finalizers:
        meta["finalizers"] = finalizers
    body = {
        "selector": {"matchLabels": {"app": "auth"}},
        "balance": {"settleSeconds": 0, "stepIntervalSeconds": 1, "minConnections": 0},
        **spec,
    }
    return yaml.safe_dump({"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                           "metadata": meta, "spec": body})


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/connectionbalancers.connbalance.io")


class Operator:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.args = [sys.executable, "-m", "connbalance", "run", "--kubeconfig",
                     str(cluster.kubeconfig), "--namespace", namespace, "--liveness", "",
                     "--leader-election", "off",
                     # Nothing listens there: every reconcile finds Prometheus unreachable.
                     "--default-prometheus-url", "http://127.0.0.1:9"]
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = cluster.run_dir / "logs" / f"operator-{namespace}.log"

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
            self.log.close()


@pytest.fixture
def operator(cluster: Cluster, namespace: str, crd: None) -> Iterator[Operator]:
    running = Operator(cluster, namespace)
    running.start()
    yield running
    running.kill()


@pytest.fixture
def pool(cluster: Cluster, namespace: str) -> None:
    cluster.run_kubectl("apply", "-f", "-", stdin=SLEEPER.format(ns=namespace))
    cluster.run_kubectl("rollout", "status", "deployment/auth", "-n", namespace, "--timeout=90s")


def get(cluster: Cluster, namespace: str) -> dict[str, Any]:
    done = cluster.run_kubectl("get", "connectionbalancer", "auth", "-n", namespace, "-o", "json",
                               check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def reasons(cluster: Cluster, namespace: str) -> list[str]:
    listed = cluster.run_kubectl("get", "events", "-n", namespace, "-o", "json",
                                 "--field-selector", "involvedObject.kind=ConnectionBalancer")
    items = json.loads(listed.stdout)["items"]
    return [e["reason"] for e in items for _ in range(e.get("count") or 1)]


def test_prometheus_down_is_said_once_and_status_is_not_rewritten_while_nothing_changes(
    cluster, namespace, pool, operator
):
    cluster.run_kubectl("apply", "-f", "-", stdin=balancer(namespace))
    degraded = eventually(
        lambda: (b := get(cluster, namespace)).get("status", {}).get("phase") == "Degraded" and b,
        what="the balancer goes Degraded on an unreachable Prometheus",
    )
    version = degraded["metadata"]["resourceVersion"]
    time.sleep(6)  # stepIntervalSeconds is 1: several more reconciles, each failing the same way
    assert get(cluster, namespace)["metadata"]["resourceVersion"] == version
    assert reasons(cluster, namespace).count("PrometheusUnreachable") == 1
    conditions = {c["type"]: c for c in degraded["status"]["conditions"]}
    assert conditions["MetricsAvailable"]["status"] == "False"
    assert conditions["MetricsAvailable"]["reason"] == "PrometheusUnreachable"


@pytest.mark.parametrize(
    ("how", "reason"),
    [({"paused": True}, "SpecPaused"),
     ({"annotations": {"connbalance.io/paused": "true"}}, "AnnotationPaused")],
)
def test_a_paused_balancer_says_what_paused_it_and_resumes_when_lifted(
    cluster, namespace, pool, operator, how, reason
):
    annotations = how.get("annotations")
    spec = {k: v for k, v in how.items() if k != "annotations"}
    cluster.run_kubectl("apply", "-f", "-", stdin=balancer(namespace, annotations=annotations,
                                                           **spec))
    paused = eventually(
        lambda: (s := get(cluster, namespace).get("status", {})).get("phase") == "Paused" and s,
        what="the balancer reports Paused",
    )
    condition = next(c for c in paused["conditions"] if c["type"] == "Paused")
    assert (condition["status"], condition["reason"]) == ("True", reason)
    assert "PrometheusUnreachable" not in reasons(cluster, namespace), "paused reads nothing"
    if annotations:
        cluster.run_kubectl("annotate", "connectionbalancer", "auth", "-n", namespace,
                            "connbalance.io/paused-")
    else:
        cluster.run_kubectl("patch", "connectionbalancer", "auth", "-n", namespace,
                            "--type=merge", "-p", '{"spec": {"paused": false}}')
    resumed = eventually(
        lambda: (s := get(cluster, namespace).get("status", {})).get("phase") == "Degraded" and s,
        what="the lifted pause lets the balancer look again",
    )
    condition = next(c for c in resumed["conditions"] if c["type"] == "Paused")
    assert condition["status"] == "False"


def test_a_balancer_deleted_while_the_operator_is_down_goes_at_once(
    cluster, namespace, pool, operator
):
    cluster.run_kubectl("apply", "-f", "-", stdin=balancer(namespace))
    eventually(lambda: get(cluster, namespace).get("status", {}).get("phase"),
               what="the operator has reconciled the balancer")
    assert not get(cluster, namespace)["metadata"].get("finalizers")
    operator.kill()
    cluster.run_kubectl("delete", "connectionbalancer", "auth", "-n", namespace,
                        "--timeout=20s")
    assert get(cluster, namespace) == {}


def test_the_finalizer_of_older_versions_is_taken_off_so_deletion_never_hangs(
    cluster, namespace, pool, operator
):
    cluster.run_kubectl("apply", "-f", "-",
                        stdin=balancer(namespace, finalizers=["connbalance.io/finalizer"]))
    eventually(lambda: not get(cluster, namespace)["metadata"].get("finalizers"),
               what="the old finalizer is removed")
    operator.kill()
    cluster.run_kubectl("delete", "connectionbalancer", "auth", "-n", namespace,
                        "--timeout=20s")
    assert get(cluster, namespace) == {}
