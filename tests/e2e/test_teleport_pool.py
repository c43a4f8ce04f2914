"""The recipe on the test cluster: auth pods shaped like the teleport-cluster chart's render, with
the agent and volumes read verbatim from docs/teleport/values.yaml, come up Ready, and the agent
takes a drain request from the downward-API annotations file. An agent that cannot act (started
without NET_ADMIN) stays up and leaves its pod Ready."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.e2e.pool import clients
from tests.e2e.teleport_pool import (
    AGENT_PORT,
    AUTH_PORT,
    ROOT,
    auth_manifest,
    auth_objects,
    recipe_sidecar,
    recipe_values,
    teleport_container,
)
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/instance=teleport,app.kubernetes.io/component=auth"


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


@pytest.fixture
def auth_pool(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The recipe's auth pool of three in a ``privileged`` namespace, rolled out."""
    cluster.run_kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged"
    )
    manifest = auth_manifest(
        namespace=namespace, grace_seconds=5, prestop_seconds=1, min_ready_seconds=0,
        probe_period_seconds=1,
    )  # fmt: skip
    cluster.run_kubectl("apply", "-f", "-", stdin=manifest)
    cluster.run_kubectl(
        "rollout", "status", "-n", namespace, "deployment/teleport-auth", "--timeout=120s"
    )
    yield namespace
    cluster.run_kubectl(
        "delete", "-n", namespace, "deployment/teleport-auth", "--wait=false", check=False
    )


def live_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


def agent_status(ip: str) -> dict[str, Any]:
    """The agent's /status on the pod's address. (docs/teleport.md reaches it through the API
    server's pod proxy, which refuses the test cluster's loopback pod addresses.)"""
    with urllib.request.urlopen(f"http://{ip}:{AGENT_PORT}/status", timeout=2) as response:
        return dict(json.loads(response.read()))


def answer(ip: str) -> dict[str, Any] | None:
    try:
        return agent_status(ip)
    except OSError:
        return None


def annotations_file(cluster: Cluster, namespace: str, pod: Any) -> str:
    name, uid = pod.metadata.name, pod.metadata.uid
    directory = cluster.run_dir / "pods" / f"{namespace}_{name}_{uid[:8]}" / "volumes"
    return (directory / "connbalance-podinfo" / "annotations").read_text()


def test_the_recipes_pool_comes_up_ready_with_the_agent_in_reset_mode(
    cluster: Cluster, core: client.CoreV1Api, auth_pool: str
) -> None:
    pods = live_pods(core, auth_pool)
    assert len(pods) == 3
    sidecar = recipe_sidecar()
    for pod in pods:
        statuses = {s.name: s for s in pod.status.container_statuses}
        assert set(statuses) == {"teleport", sidecar["name"]}
        assert all(s.ready and s.restart_count == 0 for s in statuses.values())
        assert pod.spec.automount_service_account_token is False
        # No probe gates on the agent, so the pod may be Ready a moment before it listens.
        ip = pod.status.pod_ip
        status = eventually(lambda ip=ip: answer(ip), what=f"the agent on {ip} answers")
        assert status["mode"] == "reset"
        assert "checksum/config=" in annotations_file(cluster, auth_pool, pod)


def test_a_drain_annotation_reaches_the_agent_through_the_file_and_is_acted_on(
    cluster: Cluster, core: client.CoreV1Api, auth_pool: str
) -> None:
    pod = live_pods(core, auth_pool)[0]
    name, ip = pod.metadata.name, pod.status.pod_ip
    with clients(f"{ip}:{AUTH_PORT}", count=6):
        eventually(
            lambda: (answer(ip) or {}).get("active", 0) >= 6,
            what="the agent counts the six clients' connections",
        )
        drain = json.dumps({"id": "t-drain-1", "count": 2, "windowSeconds": 1})
        cluster.run_kubectl(
            "annotate", "-n", auth_pool, f"pod/{name}", f"connbalance.io/drain={drain}"
        )

        def done() -> dict[str, Any] | None:
            requests = agent_status(ip)["requests"]
            found = next((r for r in requests if r["id"] == "t-drain-1"), None)
            return found if found and found["state"] == "done" else None

        request = eventually(done, what="the agent reports the request done")
    assert request["count"] == 2
    assert request["cycled"] == 2
    # From the downward-API file (the API watch is off, and the pod has no token for it).
    (log,) = (cluster.run_dir / "pods").glob(f"{auth_pool}_{name}_*/connbalance-agent.log")
    assert "connbalance-podinfo/annotations request t-drain-1" in log.read_text()


def test_the_recipes_connectionbalancer_is_accepted_and_names_the_charts_pool(
    cluster: Cluster, namespace: str
) -> None:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/connectionbalancers.connbalance.io",
    )  # fmt: skip
    balancer = yaml.safe_load((ROOT / "docs" / "teleport" / "connectionbalancer.yaml").read_text())
    balancer["metadata"]["namespace"] = namespace
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(balancer))
    stored = json.loads(
        cluster.run_kubectl("get", "cbal", "teleport-auth", "-n", namespace, "-o", "json").stdout
    )["spec"]
    assert stored["dryRun"] is True
    assert stored["metrics"]["preset"] == "teleport-auth"
    assert stored["actuation"]["method"] == "annotation"
    (deployment,) = (o for o in auth_objects(namespace=namespace) if o["kind"] == "Deployment")
    assert stored["workloadRef"] == {"kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert stored["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


# What a container runtime does to a container whose securityContext adds no NET_ADMIN: the
# process starts without it (the test kubelet ignores securityContext, so setpriv drops it).
WITHOUT_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"]


def test_the_recipe_gates_readiness_on_teleports_diag_port_and_never_on_the_agent() -> None:
    sidecar = recipe_sidecar()
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(sidecar)
    # The chart's own probe, which the recipe leaves alone: Teleport's /readyz on diag.
    probe = teleport_container(prestop_seconds=30, probe_period_seconds=5)["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "diag"}


@pytest.fixture
def unable_pool(cluster: Cluster, namespace: str) -> Iterator[str]:
    """One auth pod whose recipe sidecar runs without NET_ADMIN (nothing else changed)."""
    cluster.run_kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged"
    )
    values = copy.deepcopy(recipe_values())
    (agent,) = (c for c in values["auth"]["extraContainers"] if c["name"] == "connbalance-agent")
    agent["command"] = [*WITHOUT_NET_ADMIN, *agent["command"]]
    manifest = auth_manifest(
        namespace=namespace, replicas=1, values=values, grace_seconds=5, prestop_seconds=1,
        min_ready_seconds=0, probe_period_seconds=1,
    )  # fmt: skip
    cluster.run_kubectl("apply", "-f", "-", stdin=manifest)
    cluster.run_kubectl(
        "rollout", "status", "-n", namespace, "deployment/teleport-auth", "--timeout=120s"
    )
    yield namespace
    cluster.run_kubectl(
        "delete", "-n", namespace, "deployment/teleport-auth", "--wait=false", check=False
    )


def test_an_agent_that_cannot_act_stays_up_and_its_auth_pod_stays_ready(
    cluster: Cluster, core: client.CoreV1Api, unable_pool: str
) -> None:
    (pod,) = live_pods(core, unable_pool)
    name, ip = pod.metadata.name, pod.status.pod_ip
    status = eventually(lambda: answer(ip), what=f"the agent on {ip} answers")
    assert "CAP_NET_ADMIN" in status["degraded"]
    with clients(f"{ip}:{AUTH_PORT}", count=4):
        drain = json.dumps({"id": "t-unable-1", "count": 1, "windowSeconds": 1})
        cluster.run_kubectl(
            "annotate", "-n", unable_pool, f"pod/{name}", f"connbalance.io/drain={drain}"
        )

        def answered() -> dict[str, Any] | None:
            requests = agent_status(ip)["requests"]
            return next((r for r in requests if r["id"] == "t-unable-1"), None)

        request = eventually(answered, what="the agent answers the request")
        assert request["state"] == "rejected"
        assert "cannot cycle connections" in request["reason"]
        # Ready the whole time, and the agent never restarted: several seconds of the kubelet's
        # restarts (one second apart) would have shown a crash loop.
        for _ in range(8):
            current = core.read_namespaced_pod(name, unable_pool)
            conditions = {c.type: c.status for c in current.status.conditions}
            assert conditions["Ready"] == "True"
            statuses = {s.name: s for s in current.status.container_statuses}
            assert statuses["connbalance-agent"].restart_count == 0
            assert statuses["connbalance-agent"].ready
            time.sleep(1)
    with urllib.request.urlopen(f"http://{ip}:{AGENT_PORT}/metrics", timeout=2) as response:
        metrics = response.read().decode()
    assert "connbalance_agent_can_cycle 0.0" in metrics
