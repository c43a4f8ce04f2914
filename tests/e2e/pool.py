"""A Teleport-auth-like pool on the test cluster: a Deployment of simulated gRPC servers, each with
the agent beside it in proxy mode, scraped by the cluster's Prometheus, and a Service in front of
them; and, outside the cluster, the flow-hash balancer the clients go through, its backends kept
equal to what it is told (the Service's ready endpoints, as an NLB follows its targets).

The Deployment replaces one pod at a time, the old one first (maxUnavailable 1, maxSurge 0): the
clients of each restarted pod have reconnected elsewhere before its replacement is Ready, so the
last pod restarted comes back empty, as it does behind an NLB whose new targets take longer to
register than the old ones' clients take to reconnect."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connbalance_sim.balancer import ConnectionEnd, FlowHashBalancer

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
apiVersion: v1
kind: Service
metadata: {{name: auth, namespace: {ns}}}
spec:
  selector: {{app.kubernetes.io/component: auth}}
  ports: [{{name: grpc, port: {agent}, targetPort: {agent}}}]
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
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 0, maxUnavailable: 1}}}}
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


class StickyBalancer(FlowHashBalancer):
    """A flow-hash balancer that, while ``sticky``, sends each client a backend closed back to
    that same backend: session affinity that defeats every attempt to move a client.

    Connections are anonymous here (a client redials from a new port), so what is owed is
    counted per backend: each connection a backend in service closed is one reconnect owed to
    it, paid by the next new connection, or given back when that dial fails. A dial the pod
    refuses (it steers) is tried again on the same pod, never on a fresh pick."""

    def __init__(self, **options: Any) -> None:
        super().__init__(on_end=self._owe, **options)
        self.sticky = False
        self.owed: collections.deque[str] = collections.deque()
        self._promised: dict[tuple[str, int], str] = {}

    def _owe(self, end: ConnectionEnd) -> None:
        if self.sticky and end.in_service and end.closed_by_backend:
            self.owed.append(end.backend)

    def choose(self, peer: tuple[str, int], *, attempt: int = 0) -> Any:
        promised = self._promised.get(peer)
        if self.sticky and attempt > 0 and promised is not None and self.is_ready(promised):
            return self._backends[promised]  # a refused dial is tried again on the same pod
        if self.sticky and attempt == 0:
            for index, name in enumerate(self.owed):
                if self.is_ready(name):
                    del self.owed[index]
                    self._promised[peer] = name
                    return self._backends[name]
        return super().choose(peer, attempt=attempt)

    async def _connect(self, pair: Any) -> None:
        await super()._connect(pair)
        owed = self._promised.pop(pair.peer, None)
        if owed is not None and pair not in self._pairs:
            self.owed.appendleft(owed)  # the dial failed: still owed


class OutsideBalancer:
    """The balancer in a thread of its own, its backends kept equal to the pods it is told of.

    ``redials`` is the balancer's (0: a refused dial resets the client, as an NLB does; N: dial
    again on fresh picks, as Teleport's proxy dials the auth Service again)."""

    def __init__(self, *, redials: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.balancer = StickyBalancer(
            host="127.0.0.1", port=0, health_interval=0.25, redials=redials
        )
        self._backends: dict[str, tuple[str, int]] = {}

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.balancer.start(), self._loop).result(10)
        return self.balancer.address

    def follow(self, pods: dict[str, str], *, port: int = AGENT_PORT) -> None:
        """Make the backends the pods named (name -> IP, serving on ``port``), as target
        registration does."""
        wanted = {name: (ip, port) for name, ip in pods.items()}

        def apply() -> None:
            for name in set(self._backends) - set(wanted):
                self.balancer.deregister(name)
            for name, (ip, served) in wanted.items():
                if self._backends.get(name) != (ip, served):
                    self.balancer.register(name=name, host=ip, port=served, health_port=HTTP_PORT)
            self._backends = dict(wanted)

        self._loop.call_soon_threadsafe(apply)

    def stick(self, sticky: bool) -> None:
        """Turn the sticky mode on or off (off forgets what was owed)."""

        async def apply() -> None:
            self.balancer.sticky = sticky
            if not sticky:
                self.balancer.owed.clear()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(5)

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
