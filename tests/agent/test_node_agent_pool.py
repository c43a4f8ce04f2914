"""End to end on the test cluster: a Teleport-shaped auth pool with no sidecar, in a namespace
held to Pod Security ``baseline``, is balanced after ``kubectl rollout restart`` by the operator
(installed by the chart) and the node agent, with cycled/needed of 1.1 or below.

The chart is installed with ``nodeAgent.enabled`` into a namespace of its own, left at Pod
Security ``privileged``, and its DaemonSet runs one node agent on each test node
(``tests/agent/daemonset.py``). The test cluster's pods are processes sharing the root network
namespace, each on its own loopback address, so the node agents serve them as they serve
``hostNetwork`` pods (``nodeAgent.netnsFrom: [host]``): by address and port.

``needed`` is the excess over the mean in the skewed pool, the fewest connections that must move;
``cycled`` is what the node agents report they cycled for the pool's pods.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from connbalance.agent.netlink import SockDiag
from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from connbalance_sim.balancer import FlowHashBalancer
from tests.agent.daemonset import NodeAgentPod, chart_with_node_agent, free_port
from tests.cluster.cluster import Cluster
from tests.e2e.pool import clients
from tests.e2e.teleport_pool import AUTH_PORT, DIAG_PORT, auth_manifest, selector_labels
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.netadmin]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 120
NODES = ("test-node-0", "test-node-1")
SELECTOR = ",".join(f"{k}={v}" for k, v in selector_labels("teleport").items())


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(cluster.kubectl), *args], input=stdin, capture_output=True, text=True, timeout=180,
        env=cluster.env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


class Balancer:
    """The flow-hash balancer in a thread, its backends the Ready pods' auth port, checked on
    the diag port (a check on the auth port would fail while a pod steers)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.balancer = FlowHashBalancer(host="127.0.0.1", port=0, health_interval=0.25)
        self._backends: dict[str, str] = {}

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.balancer.start(), self._loop).result(10)
        return self.balancer.address

    def follow(self, pods: dict[str, str]) -> None:
        def apply() -> None:
            for name in set(self._backends) - set(pods):
                self.balancer.deregister(name)
            for name, ip in pods.items():
                if self._backends.get(name) != ip:
                    self.balancer.register(name=name, host=ip, port=AUTH_PORT,
                                           health_port=DIAG_PORT)  # fmt: skip
            self._backends = dict(pods)

        self._loop.call_soon_threadsafe(apply)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.balancer.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def ready_pods(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    ready = {}
    for pod in core.list_namespaced_pod(namespace, label_selector=SELECTOR).items:
        conditions = {c.type: c.status for c in (pod.status.conditions or [])}
        if pod.metadata.deletion_timestamp is None and conditions.get("Ready") == "True":
            ready[pod.metadata.name] = pod.status.pod_ip
    return ready


def loads(core: client.CoreV1Api, namespace: str) -> dict[str, int]:
    """Established connections on each Ready pod's auth port, as the kernel lists them."""
    with SockDiag() as diag:
        return {name: len(diag.established(port=AUTH_PORT, address=ip))
                for name, ip in ready_pods(core, namespace).items()}  # fmt: skip


def excess(values: dict[str, int]) -> float:
    mean = sum(values.values()) / len(values)
    return sum(max(0.0, v - mean) for v in values.values())


def skew(values: dict[str, int]) -> float:
    mean = sum(values.values()) / len(values) if values else 0
    return max(values.values()) / mean if mean else 0.0


@pytest.fixture
def node_agents(cluster: Cluster, namespace: str) -> Iterator[list[NodeAgentPod]]:
    """The chart, with its node agent DaemonSet, in a namespace of its own watching the pool's."""
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    with chart_with_node_agent(cluster, release=f"cb-{namespace}", namespace=f"{namespace}-cb",
                               watch=namespace, port=free_port()) as agents:  # fmt: skip
        yield agents


def serving(agents: list[NodeAgentPod], namespace: str) -> set[str]:
    """The names of the pool's pods the node agents serve now."""
    return {p["name"] for a in agents for p in a.get("/status")["pods"]
            if p["namespace"] == namespace}  # fmt: skip


def cycled(agents: list[NodeAgentPod], namespace: str, *, besides: set[str]) -> int:
    """What the node agents cycled on the pool's pods but those named ``besides``: the pods of
    before the rollout, which the operator may have balanced as a fresh pool and which the
    agents still list while they terminate."""
    return sum(int(p["cycled_total"]) for a in agents for p in a.get("/status")["pods"]
               if p["namespace"] == namespace and p["name"] not in besides)  # fmt: skip


def requested(status: dict[str, Any]) -> int:
    return int((status.get("controller") or {}).get("requested_total", 0))


def last_look_before_the_first_drain(
    look: Callable[[], dict[str, int]], *, drained: Callable[[], bool], first: dict[str, int],
    timeout: float = 120.0,
) -> dict[str, int]:
    """The pool's loads at the last look before ``drained`` turned true, from ``first`` on."""
    last, deadline = first, time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = look()
        if drained():
            return last
        if len(seen) == len(first):
            last = seen
        time.sleep(0.25)
    raise AssertionError(f"no drain within {timeout:g}s of the pool settling: {last}")


def test_a_pool_with_no_sidecar_in_a_baseline_namespace_is_balanced_by_the_node_agent(
    cluster, namespace, node_agents
):
    kubectl(cluster, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    manifest = auth_manifest(
        namespace=namespace, values={}, grace_seconds=5, prestop_seconds=1, min_ready_seconds=0,
        probe_period_seconds=1,
    )  # fmt: skip
    kubectl(cluster, "apply", "-f", "-", stdin=manifest)
    kubectl(cluster, "rollout", "status", "-n", namespace, "deployment/teleport-auth",
            "--timeout=120s")  # fmt: skip
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api)
    for pod in core.list_namespaced_pod(namespace, label_selector=SELECTOR).items:
        assert [c.name for c in pod.spec.containers] == ["teleport"]  # no sidecar

    outside = Balancer()
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
            eventually(lambda: sum(loads(core, namespace).values()) == CLIENTS,
                       what=f"all {CLIENTS} clients connected")  # fmt: skip
            spec = {
                "selector": {"matchLabels": selector_labels("teleport")},
                "workloadRef": {"kind": "Deployment", "name": "teleport-auth"},
                "metrics": {"preset": "teleport-auth", "maxStalenessSeconds": 30,
                            "prometheus": {"url": cluster.prometheus_url}},
                "balance": {"settleSeconds": 25, "stepIntervalSeconds": 3,
                            "maxFractionPerStep": 0.5, "maxPoolFractionPerStep": 0.5,
                            "minConnections": 10},
                # A 6 s window (the recipe's is 30 s): the kernel refuses a shed client's
                # reconnects for the window and 1 s more, and a client refused twice may come
                # back after that, to its old pod. With 2 s, the closes of the window's last
                # second were half of them, and a run cycled 45 for 40.
                "actuation": {"agent": "node", "serverPort": AUTH_PORT, "windowSeconds": 6,
                              "quietMillis": 100, "deadlineSeconds": 10},
            }  # fmt: skip
            body = {"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                    "metadata": {"name": "auth", "namespace": namespace}, "spec": spec}  # fmt: skip
            kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(body))

            def status() -> dict[str, Any]:
                got = kubectl(cluster, "get", "connectionbalancer", "auth", "-n", namespace,
                              "-o", "json")  # fmt: skip
                return dict(json.loads(got).get("status", {}))

            eventually(lambda: status().get("phase") == "Balanced",
                       what="the fresh pool judged balanced", timeout=120)  # fmt: skip

            fresh = serving(node_agents, namespace)
            requested_before = requested(status())
            kubectl(cluster, "rollout", "restart", "deployment/teleport-auth", "-n", namespace)
            kubectl(cluster, "rollout", "status", "deployment/teleport-auth", "-n", namespace,
                    "--timeout=180s")  # fmt: skip
            # The operator waits settleSeconds after the last pod turned Ready. 25 s leaves the
            # clients time to come back on a loaded machine (12 s ran out once in CI), so the
            # skew measured below is the one the operator starts from.
            acted = cycled(node_agents, namespace, besides=fresh)
            assert acted == 0, "acted before the rollout ended"
            skewed = eventually(
                lambda: (v := loads(core, namespace)) and len(v) == 3
                and sum(v.values()) >= CLIENTS * 0.95 and v,
                what="clients back after the rollout",
            )  # fmt: skip
            acted = cycled(node_agents, namespace, besides=fresh)
            assert acted == 0, "acted before the pool settled"
            # The pool as the operator found it: the last look before its first drain request,
            # once late reconnects have landed too.
            skewed = last_look_before_the_first_drain(
                lambda: loads(core, namespace),
                drained=lambda: requested(status()) > requested_before
                or cycled(node_agents, namespace, besides=fresh) > 0,
                first=skewed,
            )  # fmt: skip
            assert skew(skewed) > 1.25, f"the rolling restart should skew the pool: {skewed}"
            needed = excess(skewed)

            final = eventually(
                lambda: status().get("phase") == "Balanced" and (v := loads(core, namespace))
                and len(v) == 3 and skew(v) <= 1.15 and v,
                what="the pool balanced again", timeout=180,
            )  # fmt: skip
            total = cycled(node_agents, namespace, besides=fresh)
            # The operator read what was cycled from the node agent on each pod's hostIP.
            eventually(lambda: [e for e in status().get("pods") or []
                                if e.get("lastDrainState") == "done"
                                and e.get("lastDrainConfirmed")],
                       what="a drain confirmed by a node agent in status", timeout=60)  # fmt: skip
    finally:
        stop.set()
        follower.join(5)
        outside.stop()
        api.close()

    print(f"cycled {total} for {needed:g} needed: {skewed} -> {final}")
    assert total > 0
    # Runs here measured 41 for 40, 41 for 40 and 47 for 48. A bound of 1.25 was held before
    # ``needed`` was taken at the last look before the first drain: taken as soon as 95% of the
    # clients were back, it could miss late reconnects that the operator did see.
    assert total / needed <= 1.1, f"cycled {total} for {needed:g} needed ({skewed} -> {final})"
    served = [p for a in node_agents for p in a.get("/status")["pods"]]
    assert {p["netns"] for p in served} == {"host: the node's namespace"}
    assert {p["port"] for p in served} == {AUTH_PORT}
    labels = json.loads(kubectl(cluster, "get", "namespace", namespace, "-o", "json"))
    assert labels["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
