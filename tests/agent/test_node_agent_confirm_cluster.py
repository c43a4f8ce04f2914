"""End to end on the test cluster: what the node agent cycled reaches the ConnectionBalancer's
status. The operator, from the chart rendered with ``nodeAgent.enabled`` (so told the node
agent's port, ``--node-agent-port``), drains a skewed pod through its annotation; the node agent
cycles on the pod's node; the operator reads the node agent's answer for that pod on the pod's
``hostIP`` and records it beside the count it asked.

The DaemonSet cannot run here (the test kubelet ignores its node affinity), so the chart's objects
are applied without it, and the node agent runs as a process for ``test-node-0`` on the nodes'
address (every test pod's ``hostIP`` is 127.0.0.1), with the chart's ServiceAccount and rights.
The pool's pods are pinned to that node; the clients hold gRPC streams to one pod only.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from tests.agent.nodeproc import NodeAgentProcess
from tests.agent.test_node_agent_pool import helm, kubectl, node_agent_kubeconfig
from tests.cluster.cluster import Cluster
from tests.e2e.pool import clients
from tests.e2e.teleport_pool import AUTH_PORT, auth_objects, selector_labels
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.netadmin]

ROOT = Path(__file__).resolve().parents[2]
NODE = "test-node-0"
CLIENTS = 12
# Not the operator's to install here: the DaemonSet (a process stands in) and the admission
# policy (cluster-wide; its own test is tests/agent/test_drain_admission.py).
LEFT_OUT = {"DaemonSet", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def operator(cluster: Cluster, namespace: str, port: int) -> Iterator[list[str]]:
    """The chart's operator objects, rendered with the node agent on ``port``; its args."""
    kubectl(cluster, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    release = f"cb-{namespace}"
    rendered = helm().render("nodeAgent.enabled=true", f"nodeAgent.port={port}",
                             f"watchNamespaces={{{namespace}}}", "logLevel=DEBUG",
                             release=release, namespace=namespace)  # fmt: skip
    mine = [d for d in rendered if d["kind"] not in LEFT_OUT
            and not d["metadata"]["name"].endswith("-node-agent")]  # fmt: skip
    (deployment,) = [d for d in mine if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(mine))
    try:
        kubectl(cluster, "rollout", "status", "-n", namespace,
                f"deployment/{deployment['metadata']['name']}", "--timeout=120s")  # fmt: skip
        yield list(args)
    finally:
        kubectl(cluster, "delete", "-f", "-", "--ignore-not-found", "--wait=false",
                stdin=yaml.safe_dump_all(mine))  # fmt: skip
        kubectl(cluster, "delete", "clusterrole,clusterrolebinding",
                f"{release}-connbalance-node-agent", "--ignore-not-found")  # fmt: skip


@pytest.fixture
def node_agent(cluster, namespace, port, tmp_path) -> Iterator[NodeAgentProcess]:
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    env = node_agent_kubeconfig(cluster, namespace, tmp_path / "node-agent.kubeconfig")
    state = tmp_path / "state"
    state.mkdir()
    agent = NodeAgentProcess(env=env, node=NODE, namespace=namespace, state=state,
                             log=tmp_path / "node-agent.log", netns_from="host",
                             listen=f"127.0.0.1:{port}")  # fmt: skip
    try:
        yield agent
    finally:
        agent.stop()
        assert "Traceback" not in agent.log.read_text(), agent.log.read_text()


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


def test_what_the_node_agent_cycled_shows_in_the_balancers_status(
    cluster, namespace, operator, node_agent, port
):
    assert f"--node-agent-port={port}" in operator
    kubectl(cluster, "apply", "-f", "-", stdin=pinned_pool(namespace))
    kubectl(cluster, "rollout", "status", "-n", namespace, "deployment/teleport-auth",
            "--timeout=120s")  # fmt: skip
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=",".join(f"{k}={v}" for k, v in
                                               selector_labels("teleport").items()))  # fmt: skip
        assert {p.spec.node_name for p in pods.items} == {NODE}
        assert {p.status.host_ip for p in pods.items} == {"127.0.0.1"}
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
