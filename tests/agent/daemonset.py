"""The chart installed with its node agent DaemonSet on the test cluster, and its pods.

The test kubelet binds each DaemonSet pod to the node its affinity names and gives a
``hostNetwork`` pod its node's address, so the DaemonSet runs as it would on real nodes: one
``connbalance node-agent`` per test node, listening on that node's address, acting with the
chart's ServiceAccount. The test cluster's pods share the root network namespace, each on its own
loopback address, so the node agents serve them as ``hostNetwork`` pods are served
(``nodeAgent.netnsFrom: [host]``): by address and port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.agent.nodestatus import node_agent_get, node_agent_request
from tests.chart.helmrun import Helm
from tests.cluster.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
NODE_AGENT_LABELS = "app.kubernetes.io/component=node-agent"


def helm() -> Helm:
    path = os.environ.get("CONNBALANCE_HELM", "")
    if not path or not Path(path).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return Helm(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class NodeAgentPod:
    """One pod of the DaemonSet: where it runs, where it answers, where its log is."""

    name: str
    node: str
    address: str  # its node's, as a hostNetwork pod's
    port: int
    log_path: Path

    def get(self, path: str) -> Any:
        return node_agent_get(f"http://{self.address}:{self.port}", path)

    def request(self, namespace: str, pod: str, request_id: str) -> dict[str, Any] | None:
        return node_agent_request(f"http://{self.address}:{self.port}", namespace, pod, request_id)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def node_agent_pods(cluster: Cluster, namespace: str, port: int) -> list[NodeAgentPod]:
    """The DaemonSet's pods in ``namespace``, one per node, sorted by node."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        listed = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=NODE_AGENT_LABELS).items
    finally:
        api.close()
    return sorted(
        (NodeAgentPod(
            name=p.metadata.name, node=p.spec.node_name, address=p.status.pod_ip, port=port,
            log_path=cluster.run_dir / "pods"
            / f"{namespace}_{p.metadata.name}_{p.metadata.uid[:8]}" / "node-agent.log",
        ) for p in listed if p.metadata.deletion_timestamp is None),
        key=lambda a: a.node,
    )  # fmt: skip


@contextmanager
def chart_with_node_agent(
    cluster: Cluster, *, release: str, namespace: str, watch: str, port: int,
    sets: tuple[str, ...] = (),
) -> Iterator[list[NodeAgentPod]]:
    """``helm install`` of the chart into ``namespace`` (made for it, and labelled Pod Security
    ``privileged`` for the DaemonSet), watching ``watch``, with the node agent DaemonSet on
    ``port``; its pods once each is Ready. Uninstalled after, and every node agent's log is
    checked for a traceback."""
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    # As docs/node-agent.md says to: that namespace, and only that one, at privileged.
    cluster.run_kubectl("create", "namespace", namespace)
    cluster.run_kubectl("label", "namespace", namespace,
                        "pod-security.kubernetes.io/enforce=privileged")
    settings = ["nodeAgent.enabled=true", "nodeAgent.netnsFrom={host}", f"nodeAgent.port={port}",
                f"watchNamespaces={{{watch}}}", "logLevel=DEBUG", *sets]  # fmt: skip
    done = helm().run(
        "install", release, str(ROOT / "charts" / "connbalance"), "--namespace", namespace,
        "--kubeconfig", str(cluster.kubeconfig),
        *[arg for s in settings for arg in ("--set", s)], "--wait", "--timeout", "180s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    agents = node_agent_pods(cluster, namespace, port)
    try:
        assert len(agents) == 2, agents  # one per test node
        yield agents
    finally:
        helm().run("uninstall", release, "--namespace", namespace, "--wait",
                   "--kubeconfig", str(cluster.kubeconfig))  # fmt: skip
        cluster.run_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for agent in agents:
            assert "Traceback" not in agent.log(), agent.log()
