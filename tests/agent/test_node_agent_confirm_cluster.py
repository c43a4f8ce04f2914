"""End to end on the test cluster: what the node agent cycled reaches the ConnectionBalancer's
status. The operator, from the chart rendered with ``nodeAgent.enabled`` (so told the node
agent's port, ``--node-agent-port``), drains a skewed pod through its annotation; the node agent
cycles on the pod's node; the operator reads the node agent's answer for that pod on the pod's
``hostIP`` and records it beside the count it asked.

The chart is installed with its DaemonSet (``tests/agent/daemonset.py``): the node agent of
``test-node-0`` listens on that node's address, which is the ``hostIP`` of its pods. The pool's
pods are pinned to that node; the clients hold gRPC streams to one pod only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from tests.agent.daemonset import NodeAgentPod, chart_with_node_agent, free_port
from tests.agent.test_node_agent_pool import kubectl
from tests.cluster.cluster import Cluster
from tests.e2e.pool import clients
from tests.e2e.teleport_pool import AUTH_PORT, auth_objects, selector_labels
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.netadmin]

ROOT = Path(__file__).resolve().parents[2]
NODE = "test-node-0"
CLIENTS = 12


@pytest.fixture
def operator(cluster: Cluster, namespace: str) -> Iterator[tuple[list[str], NodeAgentPod]]:
    """The chart with its node agent DaemonSet, in a namespace of its own: the operator's args,
    and the node agent on NODE."""
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    system = f"{namespace}-cb"
    with chart_with_node_agent(cluster, release=f"cb-{namespace}", namespace=system,
                               watch=namespace, port=free_port()) as agents:  # fmt: skip
        deployment = json.loads(kubectl(cluster, "get", "deployment", "-n", system, "-o", "json",
                                        "-l", "app.kubernetes.io/component!=node-agent"))
        (item,) = deployment["items"]
        args = item["spec"]["template"]["spec"]["containers"][0]["args"]
        yield list(args), next(a for a in agents if a.node == NODE)


def pinned_pool(namespace: str) -> str:
    """Two Teleport-shaped auth pods, no sidecar, both on NODE."""
    objects = auth_objects(
        namespace=namespace, replicas=2, values={}, grace_seconds=5, prestop_seconds=1,
        min_ready_seconds=0, probe_period_seconds=1,
    )  # fmt: skip
    for item in objects:
        if item["kind"] == "Deployment":
            item["spec"]["template"]["spec"]["nodeName"] = NODE
    return yaml.safe_dump_all(objects)


def balancer(namespace: str, prometheus: str) -> str:
    spec = {
        "selector": {"matchLabels": selector_labels("teleport")},
        "workloadRef": {"kind": "Deployment", "name": "teleport-auth"},
        "metrics": {"preset": "teleport-auth", "maxStalenessSeconds": 30,
                    "prometheus": {"url": prometheus}},
        "balance": {"mode": "continuous", "settleSeconds": 2, "stepIntervalSeconds": 3,
                    "maxFractionPerStep": 0.5, "maxPoolFractionPerStep": 0.5,
                    "minConnections": 4},
        "actuation": {"agent": "node", "serverPort": AUTH_PORT, "windowSeconds": 2,
                      "quietMillis": 100, "deadlineSeconds": 10},
    }  # fmt: skip
    return json.dumps({"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                       "metadata": {"name": "auth", "namespace": namespace}, "spec": spec})


def test_what_the_node_agent_cycled_shows_in_the_balancers_status(cluster, namespace, operator):
    args, node_agent = operator
    assert f"--node-agent-port={node_agent.port}" in args
    kubectl(cluster, "apply", "-f", "-", stdin=pinned_pool(namespace))
    kubectl(cluster, "rollout", "status", "-n", namespace, "deployment/teleport-auth",
            "--timeout=120s")  # fmt: skip
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=",".join(f"{k}={v}" for k, v in
                                               selector_labels("teleport").items()))  # fmt: skip
        assert {p.spec.node_name for p in pods.items} == {NODE}
        # The node's address: where the operator asks, and where the node agent listens.
        assert {p.status.host_ip for p in pods.items} == {node_agent.address}
        busy = sorted(pods.items, key=lambda p: p.metadata.name)[0]
    finally:
        api.close()

    def confirmed() -> dict[str, Any] | None:
        got = json.loads(kubectl(cluster, "get", "connectionbalancer", "auth", "-n", namespace,
                                 "-o", "json"))  # fmt: skip
        for entry in got.get("status", {}).get("pods") or []:
            if entry.get("name") == busy.metadata.name and entry.get("lastDrainState") == "done":
                return dict(entry)
        return None

    with clients(f"{busy.status.pod_ip}:{AUTH_PORT}", count=CLIENTS):
        kubectl(cluster, "apply", "-f", "-", stdin=balancer(namespace, cluster.prometheus_url))
        entry = eventually(confirmed, what="a drain of the busy pod confirmed in status",
                           timeout=180)  # fmt: skip
        told = node_agent.request(namespace, busy.metadata.name, entry["lastDrain"])
    assert told is not None, "the node agent knows no such request"
    assert told["state"] == "done"
    assert entry["lastDrainConfirmed"] == told["cycled"]
    assert 0 < entry["lastDrainConfirmed"] <= entry["lastDrainRequested"]
