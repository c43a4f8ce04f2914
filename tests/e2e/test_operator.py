"""The operator on a real control plane: the CRD's validation, and the whole story.

A pool of simulated auth servers with the agent beside each runs as a Deployment; the cluster's
Prometheus scrapes them; the operator runs in the cluster as the Helm chart installs it, with its
ServiceAccount's rights; clients reach the pods through a flow-hash balancer. A rolling restart
skews the pool and the operator must bring it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.e2e.pool import OutsideBalancer, agent_status, clients, pool_manifest
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 120


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(cluster.kubectl), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=cluster.env,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    kubectl(cluster, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/connectionbalancers.connbalance.io",
    )


def balancer_manifest(namespace: str, **spec: Any) -> str:
    body = {"selector": {"matchLabels": {"app.kubernetes.io/component": "auth"}}, **spec}
    return yaml.safe_dump(
        {
            "apiVersion": "connbalance.io/v1alpha1",
            "kind": "ConnectionBalancer",
            "metadata": {"name": "auth", "namespace": namespace},
            "spec": body,
        }
    )


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"balance": {"tolerance": 20}}, "spec.balance.tolerance"),
        ({"balance": {"mode": "sometimes"}}, "spec.balance.mode"),
        ({"balance": {"tolerance": 0.1, "targetTolerance": 0.5}}, "spec.balance.targetTolerance"),
        ({"metrics": {"preset": "custom"}}, "spec.metrics.query"),
        ({"actuation": {"steer": "yes"}}, "spec.actuation.steer"),
        ({"selector": None}, "spec.selector"),
    ],
)
def test_the_api_server_rejects_a_bad_balancer_naming_the_field(
    cluster, namespace, crd, spec, named
):
    manifest = yaml.safe_load(balancer_manifest(namespace, **spec))
    if manifest["spec"].get("selector") is None:
        del manifest["spec"]["selector"]
    done = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert done.returncode != 0
    assert named in done.stderr
    listed = kubectl(cluster, "get", "connectionbalancers", "-n", namespace, "-o", "json")
    assert json.loads(listed.stdout)["items"] == []


def test_the_api_server_fills_in_every_default(cluster, namespace, crd):
    kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(namespace, paused=True))
    stored = json.loads(
        kubectl(cluster, "get", "connectionbalancer", "auth", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["balance"]["maxFractionPerStep"] == 0.25
    assert stored["spec"]["actuation"]["method"] == "annotation"
    assert stored["spec"]["metrics"]["preset"] == "teleport-auth"


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, crd: None) -> Iterator[str]:
    """The chart installed into the test namespace, watching only it."""
    helm = os.environ.get("CONNBALANCE_HELM", "")
    if not helm or not Path(helm).is_file():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    release = f"cb-{namespace}"
    done = subprocess.run(
        [
            helm,
            "install",
            release,
            str(ROOT / "charts" / "connbalance"),
            "--namespace",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--set",
            f"watchNamespaces={{{namespace}}}",
            "--set",
            "logLevel=DEBUG",
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    yield release
    subprocess.run(
        [
            helm,
            "uninstall",
            release,
            "--namespace",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def ready_pods(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    listed = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=auth")
    ready = {}
    for pod in listed.items:
        conditions = {c.type: c.status for c in (pod.status.conditions or [])}
        if pod.metadata.deletion_timestamp is None and conditions.get("Ready") == "True":
            ready[pod.metadata.name] = pod.status.pod_ip
    return ready


def loads(core: client.CoreV1Api, namespace: str) -> dict[str, int]:
    out = {}
    for name, ip in ready_pods(core, namespace).items():
        try:
            out[name] = int(agent_status(ip)["active"])
        except OSError:
            continue
    return out


def skew(values: dict[str, int]) -> float:
    mean = sum(values.values()) / len(values) if values else 0
    return max(values.values()) / mean if mean else 0.0


def test_the_operator_balances_a_pool_after_a_rolling_restart(cluster, namespace, core, operator):
    kubectl(cluster, "apply", "-f", "-", stdin=pool_manifest(namespace))
    kubectl(cluster, "rollout", "status", "deployment/auth", "-n", namespace, "--timeout=120s")
    outside = OutsideBalancer()
    target = outside.start()
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            outside.follow(ready_pods(core, namespace))
            stop.wait(0.5)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        with clients(target, count=CLIENTS):
            eventually(
                lambda: sum(loads(core, namespace).values()) == CLIENTS,
                what=f"all {CLIENTS} clients connected",
            )
            spec = {
                "workloadRef": {"kind": "Deployment", "name": "auth"},
                "metrics": {
                    "preset": "teleport-auth",
                    "maxStalenessSeconds": 30,
                    "prometheus": {"url": cluster.prometheus_url},
                },
                "balance": {
                    "settleSeconds": 3,
                    "stepIntervalSeconds": 3,
                    "maxFractionPerStep": 0.5,
                    "maxPoolFractionPerStep": 0.5,
                    "minConnections": 10,
                },
                "actuation": {"windowSeconds": 2, "quietMillis": 100, "deadlineSeconds": 10},
            }
            kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(namespace, **spec))

            def status() -> dict[str, Any]:
                got = kubectl(
                    cluster, "get", "connectionbalancer", "auth", "-n", namespace, "-o", "json"
                )
                return dict(json.loads(got.stdout).get("status", {}))

            eventually(
                lambda: status().get("phase") == "Balanced",
                what="the operator judges the fresh pool balanced",
                timeout=120,
            )

            kubectl(cluster, "rollout", "restart", "deployment/auth", "-n", namespace)
            kubectl(
                cluster, "rollout", "status", "deployment/auth", "-n", namespace, "--timeout=180s"
            )
            skewed = eventually(
                lambda: (
                    (v := loads(core, namespace))
                    and sum(v.values()) >= CLIENTS * 0.9
                    and len(v) == 3
                    and v
                ),
                what="clients back after the rollout",
            )
            assert skew(skewed) > 1.25, f"the rolling restart should skew the pool: {skewed}"

            eventually(
                lambda: status().get("controller", {}).get("requested_total", 0) > 0,
                what="the operator cycles connections",
                timeout=120,
            )
            final = eventually(
                lambda: (
                    status().get("phase") == "Balanced"
                    and (v := loads(core, namespace))
                    and len(v) == 3
                    and skew(v) <= 1.15
                    and v
                ),
                what="the pool balanced again",
                timeout=180,
            )
            seen = status()
    finally:
        stop.set()
        follower.join(5)
        outside.stop()

    assert seen["skew"] <= 1.10 + 1e-9
    conditions = {c["type"]: c["status"] for c in seen["conditions"]}
    assert conditions["Balanced"] == "True"
    assert conditions["MetricsAvailable"] == "True"
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=auth")
    annotated = [
        p for p in pods.items if (p.metadata.annotations or {}).get("connbalance.io/drain")
    ]
    assert annotated, "drain requests are written onto the pods"
    for pod in annotated:
        request = json.loads(pod.metadata.annotations["connbalance.io/drain"])
        assert request["id"].startswith("cb.")
        assert request["policy"] == f"{namespace}/auth"
        done = [r for r in agent_status(pod.status.pod_ip)["requests"] if r["id"] == request["id"]]
        assert done, f"the agent of {pod.metadata.name} saw {request['id']}"
        assert done[0]["cycled"] <= request["count"]
    events = kubectl(
        cluster,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=ConnectionBalancer",
        "-o",
        "json",
    )
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert "DrainRequested" in reasons
    assert sum(final.values()) >= CLIENTS * 0.9
    (pod,) = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={operator}"
    ).items
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:9090/metrics", timeout=5) as got:
        metrics = got.read().decode()
    asked = [line for line in metrics.splitlines()
             if line.startswith("connbalance_drains_total{")
             and f'namespace="{namespace}"' in line and 'balancer="auth"' in line]
    assert asked, "the operator's own metrics count the requests"
    assert float(asked[0].rsplit(" ", 1)[1]) >= len(annotated)
