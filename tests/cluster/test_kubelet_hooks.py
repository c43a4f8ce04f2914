"""The test kubelet stops a pod as the kubelet does: a container's preStop hook first, then its
SIGTERM; a container without a hook gets SIGTERM at once."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

# Prints the time its SIGTERM arrived, then exits.
WAITER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print(time.time(), flush=True), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "time.sleep(600)\n"
)
POD = """
apiVersion: v1
kind: Pod
metadata: {{name: hooks, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: hooked
    image: python
    command: [python, -c, {script}]
    lifecycle: {{preStop: {{exec: {{command: [sleep, "2"]}}}}}}
  - name: plain
    image: python
    command: [python, -c, {script}]
"""


def test_sigterm_follows_the_prestop_hook_and_only_for_its_container(
    cluster: Cluster, namespace: str
) -> None:
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
    pod = POD.format(ns=namespace, script=json.dumps(WAITER))
    cluster.run_kubectl("create", "-f", "-", stdin=pod)
    pods = cluster.run_dir / "pods"

    def log(container: str) -> str:
        found = list(pods.glob(f"{namespace}_hooks_*/{container}.log"))
        return found[0].read_text() if found else ""

    eventually(lambda: "up" in log("hooked") and "up" in log("plain"), what="both run")
    deleted = time.time()
    cluster.run_kubectl("delete", "pod", "hooks", "-n", namespace, "--wait=false")
    eventually(lambda: not core.list_namespaced_pod(namespace).items, what="the pod is removed")
    hooked, plain = (float(log(c).split()[-1]) for c in ("hooked", "plain"))
    assert plain - deleted < 1.5
    assert hooked - deleted >= 2.0
    assert hooked - deleted < 10.0  # well inside the grace period: the hook ended it
