"""``connbalance node-agent`` as a process, fed by a real API server, serving a pod whose network
namespace the test creates: it reads the pod's drain annotation through a watch of its node's
pods, refuses a request its ConnectionBalancer does not route to it, cycles exactly the count of
one that does, and after a SIGKILL mid-window the pod accepts connections again within the window.

The pod object is bound to a node no kubelet runs, so nothing but the node agent acts on it; its
address is written into its status as a kubelet would. Its server runs in an ``ip netns add``
namespace and a real cgroup named for the pod's uid, and the node agent, in the root namespace,
finds it with ``--netns-from cgroup``.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from tests.agent.netns import network_namespace, require_tools
from tests.agent.nodeproc import NodeAgentProcess
from tests.agent.podnet import accepted, connect, echo_server, echoes, pod_cgroup, refusals
from tests.agent.support import deadline_in
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.netadmin]

ROOT = Path(__file__).resolve().parents[2]
POD_IP, PORT = "127.0.9.7", 3025
POD = "teleport-auth-0"
LABELS = {"app.kubernetes.io/component": "auth", "app.kubernetes.io/instance": "teleport"}


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/connectionbalancers.connbalance.io",
    )  # fmt: skip


@pytest.fixture
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    yield client.CoreV1Api(api)
    api.close()


def balancer(namespace: str, name: str, **actuation: Any) -> str:
    return yaml.safe_dump({
        "apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": LABELS}, "dryRun": True, "actuation": actuation},
    })  # fmt: skip


def bound_pod(core: client.CoreV1Api, namespace: str, node: str) -> str:
    """The pod, bound to ``node``, with POD_IP as its address; its uid."""
    body = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "labels": LABELS},
        "spec": {"nodeName": node, "containers": [{"name": "teleport", "image": "none"}]},
    }  # fmt: skip
    created = core.create_namespaced_pod(namespace, body)
    status = {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}
    core.patch_namespaced_pod_status(POD, namespace, {"status": status})
    return str(created.metadata.uid)


@pytest.fixture
def served(cluster, core, namespace, crd, tmp_path) -> Iterator[dict[str, Any]]:
    require_tools()
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    node = f"netns-node-{uuid.uuid4().hex[:6]}"
    # A Node no kubelet runs: the pod garbage collector deletes pods bound to none at all.
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    with network_namespace() as netns, echo_server(POD_IP, PORT, netns=netns) as server:
        uid = bound_pod(core, namespace, node)
        with pod_cgroup(uid, server.pid):
            cluster.run_kubectl("apply", "-f", "-", stdin=balancer(
                namespace, "auth", agent="node", serverPort=PORT, windowSeconds=2))
            cluster.run_kubectl("apply", "-f", "-", stdin=balancer(namespace, "sidecars"))
            yield {"node": node, "netns": netns, "uid": uid, "state": tmp_path}
    core.delete_node(node)


def annotate(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    value = json.dumps({"deadline": deadline_in(60), **body})
    cluster.run_kubectl(
        "annotate", "--overwrite", "-n", namespace, f"pod/{POD}", f"connbalance.io/drain={value}"
    )


def test_the_node_agent_serves_its_nodes_pod_by_its_annotation_and_a_sigkill_leaves_no_refusal(
    cluster, namespace, served, tmp_path
):
    netns = served["netns"]
    conns = connect(POD_IP, PORT, 6, netns=netns)
    start = {"env": cluster.env, "node": served["node"], "namespace": namespace,
             "state": served["state"], "log": tmp_path / "node-agent.log",
             "netns_from": "cgroup"}  # fmt: skip
    agent = NodeAgentProcess(**start)
    try:
        # A balancer whose pods' sidecars act: the node agent must not.
        annotate(cluster, namespace, {"id": "n-sidecar", "count": 2,
                                      "policy": f"{namespace}/sidecars"})  # fmt: skip
        refused = eventually(lambda: agent.request(namespace, POD, "n-sidecar"), what="refused")
        assert refused["state"] == "rejected"
        assert "actuation.agent sidecar" in refused["reason"]
        assert all(echoes(c) for c in conns)

        annotate(cluster, namespace, {"id": "n-cycle", "count": 3, "windowSeconds": 2,
                                      "quietMillis": 0, "steer": True,
                                      "policy": f"{namespace}/auth"})  # fmt: skip
        eventually(lambda: agent.request(namespace, POD, "n-cycle"), what="the node agent takes it")
        assert not accepted(POD_IP, PORT, netns=netns)  # refused for the window
        done = eventually(
            lambda: (r := agent.request(namespace, POD, "n-cycle")) and r["state"] == "done" and r,
            what="the request done",
        )
        assert (done["count"], done["cycled"]) == (3, 3)
        assert sorted(echoes(c) for c in conns) == [False] * 3 + [True] * 3

        window = 8.0
        annotate(cluster, namespace, {"id": "n-kill", "count": 0, "windowSeconds": window,
                                      "steer": True, "policy": f"{namespace}/auth"})  # fmt: skip
        eventually(lambda: not accepted(POD_IP, PORT, netns=netns), what="refusing", every=0.05)
        refusing_since = time.monotonic()
        time.sleep(window / 4)
        agent.stop(signal.SIGKILL)
        assert not accepted(POD_IP, PORT, netns=netns)  # the kernel refuses, not the process
        eventually(lambda: accepted(POD_IP, PORT, netns=netns), what="accepting again",
                   timeout=window + 1.0, every=0.1)  # fmt: skip
        assert time.monotonic() - refusing_since < window + 1.0 + 0.5
        assert refusals(POD_IP, netns=netns) == []  # no rule left behind

        # A new node agent lists the pod again: every id there is known from the state file.
        agent = NodeAgentProcess(**start)
        metrics = eventually(
            lambda: (m := agent.get("/metrics")) and 'result="duplicate"} 1.0' in m and m,
            what="the restarted node agent counts the annotation as a duplicate",
        )
        assert 'connbalance_node_agent_requests_total{result="accepted"} 0.0' in metrics
        assert accepted(POD_IP, PORT, netns=netns)
    finally:
        agent.stop()
        for conn in conns:
            conn.close()
    assert "Traceback" not in start["log"].read_text()

