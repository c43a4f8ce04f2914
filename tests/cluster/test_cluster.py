"""The test cluster behaves like Kubernetes where connbalance depends on it."""

from __future__ import annotations

import ipaddress
import itertools
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

POD_ADDRESSES = ipaddress.ip_network("127.1.0.0/16")
DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: servers, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: servers}}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: servers}}
      annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "9100"}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: server
        image: connbalance/podserver
        command: [python, tests/cluster/podserver.py]
        ports: [{{name: http, containerPort: 8080}}, {{name: metrics, containerPort: 9100}}]
        readinessProbe:
          httpGet: {{path: /healthz, port: http}}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: servers, namespace: {ns}}}
spec:
  selector: {{app: servers}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


@pytest.fixture
def servers(cluster: Cluster, namespace: str, core: client.CoreV1Api) -> Iterator[str]:
    """Three podserver pods behind a Service in ``namespace``, all Ready."""
    cluster.run_kubectl("apply", "-f", "-", stdin=DEPLOYMENT.format(ns=namespace))
    cluster.run_kubectl("rollout", "status", "-n", namespace, "deployment/servers", "--timeout=90s")
    yield namespace
    cluster.run_kubectl(
        "delete", "-n", namespace, "deployment/servers", "--wait=false", check=False
    )


def live_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector="app=servers").items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


def all_pod_names(core: client.CoreV1Api, namespace: str) -> set[str]:
    """Every pod's name, terminating ones too."""
    pods: list[Any] = core.list_namespaced_pod(namespace).items
    return {pod.metadata.name for pod in pods}


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_kubectl_reports_the_api_server_as_kubernetes_1_35(cluster: Cluster) -> None:
    version = json.loads(cluster.run_kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.35")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_a_deployment_of_three_pods_becomes_ready_on_distinct_loopback_addresses(
    core: client.CoreV1Api, servers: str
) -> None:
    pods = live_pods(core, servers)
    assert len(pods) == 3
    assert all(is_ready(pod) for pod in pods)
    addresses = {pod.status.pod_ip for pod in pods}
    assert len(addresses) == 3
    assert all(ipaddress.ip_address(ip) in POD_ADDRESSES for ip in addresses)
    for pod in pods:
        assert http_get(f"http://{pod.status.pod_ip}:8080/").strip() == pod.metadata.name


def test_a_rollout_restart_replaces_the_pods_one_by_one(
    cluster: Cluster, core: client.CoreV1Api, servers: str
) -> None:
    old = {pod.metadata.name for pod in live_pods(core, servers)}
    cluster.run_kubectl("rollout", "restart", "-n", servers, "deployment/servers")
    most_live, fewest_ready = 0, 3
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pods = live_pods(core, servers)
        most_live = max(most_live, len(pods))
        fewest_ready = min(fewest_ready, sum(is_ready(pod) for pod in pods))
        names = {pod.metadata.name for pod in pods}
        if len(pods) == 3 and not names & old and all(is_ready(pod) for pod in pods):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the rollout did not finish within 90s")
    # maxSurge 1, maxUnavailable 0: never more than one extra pod, never fewer than 3 ready.
    assert most_live <= 4
    assert fewest_ready >= 3
    # One by one: each new pod was created only once the one before it was Ready.
    new = sorted(pods, key=lambda pod: pod.metadata.creation_timestamp)
    for before, after in itertools.pairwise(new):
        ready_at = next(
            c.last_transition_time for c in before.status.conditions if c.type == "Ready"
        )
        assert after.metadata.creation_timestamp >= ready_at
    # The old pods were stopped with SIGTERM (the server logs it) and removed.
    eventually(lambda: not old & all_pod_names(core, servers), what="the old pods are removed")
    for name in old:
        (log,) = (cluster.run_dir / "pods").glob(f"{servers}_{name}_*/server.log")
        assert "stopped on SIGTERM" in log.read_text()


def test_a_services_endpointslice_follows_pod_readiness(
    cluster: Cluster, core: client.CoreV1Api, servers: str
) -> None:
    discovery = client.DiscoveryV1Api(core.api_client)

    def endpoints() -> dict[str, bool]:
        slices: list[Any] = discovery.list_namespaced_endpoint_slice(
            servers, label_selector="kubernetes.io/service-name=servers"
        ).items
        return {
            address: bool(e.conditions.ready)
            for s in slices
            for e in s.endpoints or []
            for address in e.addresses
        }

    pods = live_pods(core, servers)
    addresses = {pod.status.pod_ip for pod in pods}
    eventually(
        lambda: endpoints() == dict.fromkeys(addresses, True),
        what="the EndpointSlice lists the three pods as ready",
    )
    target = pods[0].status.pod_ip
    http_get(f"http://{target}:8080/ready/off")
    expected = {**dict.fromkeys(addresses, True), target: False}
    eventually(lambda: endpoints() == expected, what="the unready pod's endpoint turns not ready")
    http_get(f"http://{target}:8080/ready/on")
    eventually(
        lambda: endpoints() == dict.fromkeys(addresses, True), what="the endpoint turns ready again"
    )


def test_prometheus_has_samples_from_the_new_pods_metrics(
    cluster: Cluster, core: client.CoreV1Api, servers: str
) -> None:
    cluster.run_kubectl("rollout", "restart", "-n", servers, "deployment/servers")
    cluster.run_kubectl("rollout", "status", "-n", servers, "deployment/servers", "--timeout=90s")
    new = {pod.metadata.name for pod in live_pods(core, servers)}

    def scraped() -> set[str]:
        query = urllib.parse.urlencode({"query": f'podserver_ready{{namespace="{servers}"}} == 1'})
        answer = json.loads(http_get(f"{cluster.prometheus_url}/api/v1/query?{query}"))
        return {sample["metric"]["pod"] for sample in answer["data"]["result"]}

    eventually(lambda: new <= scraped(), what=f"Prometheus has samples from {sorted(new)}")


def test_kubectl_auth_can_i_answers_from_rbac_for_a_service_account(
    cluster: Cluster, namespace: str
) -> None:
    cluster.run_kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.run_kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get,list,watch", "--resource=pods"
    )
    cluster.run_kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
    )
    account = f"--as=system:serviceaccount:{namespace}:reader"

    def can_i(*args: str) -> str:
        return cluster.run_kubectl("auth", "can-i", *args, account, check=False).stdout.strip()

    assert can_i("list", "pods", "-n", namespace) == "yes"
    assert can_i("delete", "pods", "-n", namespace) == "no"
    assert can_i("list", "secrets", "-n", namespace) == "no"
    assert can_i("list", "pods", "-n", "kube-system") == "no"


def test_a_pods_process_talks_to_the_api_server_as_its_service_account(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    pod = f"""
apiVersion: v1
kind: Pod
metadata: {{name: whoami, namespace: {namespace}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: [kubectl, auth, whoami, -o, "jsonpath={{.status.userInfo.username}}"]
"""
    cluster.run_kubectl("apply", "-f", "-", stdin=pod)

    def phase() -> str:
        return str(core.read_namespaced_pod("whoami", namespace).status.phase)  # type: ignore[union-attr]

    assert eventually(lambda: phase() in ("Succeeded", "Failed") and phase(), what="whoami ends")
    (log,) = (cluster.run_dir / "pods").glob(f"{namespace}_whoami_*/main.log")
    assert log.read_text() == f"system:serviceaccount:{namespace}:default"
    assert phase() == "Succeeded"


DAEMONSET = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: per-node, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: per-node}}}}
  template:
    metadata: {{labels: {{app: per-node}}}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleeper
        image: none
        command: [sleep, infinity]
        volumeMounts: [{{name: state, mountPath: /var/lib/per-node}}]
        env: [{{name: STATE, value: /var/lib/per-node}}]
      volumes:
      - name: state
        hostPath: {{path: /var/lib/per-node, type: DirectoryOrCreate}}
"""


def test_a_daemonset_runs_one_host_network_pod_on_each_node_at_its_address(
    cluster: Cluster, namespace: str, core: client.CoreV1Api, servers: str
) -> None:
    cluster.run_kubectl("apply", "-f", "-", stdin=DAEMONSET.format(ns=namespace))
    cluster.run_kubectl("rollout", "status", "-n", namespace, "daemonset/per-node",
                        "--timeout=90s")
    nodes = {n.metadata.name: next(a.address for a in n.status.addresses
                                   if a.type == "InternalIP")
             for n in core.list_node().items}  # fmt: skip
    assert len(set(nodes.values())) == len(nodes) == 2  # each node its own address
    daemons = core.list_namespaced_pod(namespace, label_selector="app=per-node").items
    assert sorted(p.spec.node_name for p in daemons) == sorted(nodes)  # one on each
    for pod in daemons:
        assert pod.status.pod_ip == pod.status.host_ip == nodes[pod.spec.node_name]
        # Its hostPath is the node's own: made under that node's root, not shared.
        assert (cluster.run_dir / "nodes" / pod.spec.node_name / "var/lib/per-node").is_dir()
    for pod in live_pods(core, servers):  # other pods: an address of their own, on their node
        assert pod.status.host_ip == nodes[pod.spec.node_name]
        assert pod.status.pod_ip not in nodes.values()
