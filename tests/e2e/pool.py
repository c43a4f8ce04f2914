"""A Teleport-auth-like pool on the test cluster: a Deployment of simulated gRPC servers, each with
the agent beside it in proxy mode, scraped by the cluster's Prometheus; and, outside the cluster,
the flow-hash balancer the clients go through, following the pods as an NLB follows targets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connbalance_sim.balancer import FlowHashBalancer

AGENT_PORT, SERVER_PORT, METRICS_PORT, HTTP_PORT = 3025, 3026, 3000, 9095

POOL = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: auth, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: connbalance-agent, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: connbalance-agent, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: connbalance-agent}}
subjects: [{{kind: ServiceAccount, name: auth, namespace: {ns}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: auth, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app.kubernetes.io/component: auth}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata:
      labels: {{app.kubernetes.io/component: auth}}
      annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "{metrics}"}}
    spec:
      serviceAccountName: auth
      terminationGracePeriodSeconds: 2
      containers:
      - name: server
        image: teleport
        command: [python, -m, connbalance_sim.server]
        args: [--listen, "$(POD_IP):{server}", --metrics, "$(POD_IP):{metrics}"]
        env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
      - name: agent
        image: connbalance
        command: [connbalance, agent]
        args: [--mode, proxy, --proxy-listen, "$(POD_IP):{agent}",
               --upstream, "$(POD_IP):{server}", --listen, "$(POD_IP):{http}",
               --state-file, "/tmp/connbalance-e2e-$(POD_UID).json", --max-fraction, "0.5"]
        env:
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: POD_UID, valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        readinessProbe:
          httpGet: {{path: /healthz, port: {http}}}
          periodSeconds: 1
"""


def pool_manifest(namespace: str) -> str:
    return POOL.format(
        ns=namespace, agent=AGENT_PORT, server=SERVER_PORT, metrics=METRICS_PORT, http=HTTP_PORT
    )


class OutsideBalancer:
    """The balancer in a thread of its own, its backends kept equal to the Ready pods."""

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
        """Make the backends the pods named (name -> IP), as target registration does."""

        def apply() -> None:
            for name in set(self._backends) - set(pods):
                self.balancer.deregister(name)
            for name, ip in pods.items():
                if self._backends.get(name) != ip:
                    self.balancer.register(
                        name=name, host=ip, port=AGENT_PORT, health_port=HTTP_PORT
                    )
            self._backends = dict(pods)

        self._loop.call_soon_threadsafe(apply)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.balancer.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextmanager
def clients(target: str, *, count: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connbalance_sim.clients",
            "--target",
            target,
            "--count",
            str(count),
            "--ping",
            "1",
            "--backoff-ms",
            "200",
            "--report",
            "1",
            "--ramp",
            "2",
            "--lifetime",
            "900",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def agent_status(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}:{HTTP_PORT}/status", timeout=2) as response:
        return dict(json.loads(response.read()))
