"""What the fault tests share: the operator as a process, a pool that can be skewed on cue, and the
ledger that every fault test checks (no request acted on twice, no cap exceeded).

The pool is the end-to-end one (tests/e2e/pool.py): simulated gRPC servers with the agent in
proxy mode beside each, scraped by the cluster's Prometheus, reached through a flow-hash balancer
outside the cluster. ``skew()`` makes the balancer send every client to one pod and then lets it
see all pods again, which leaves the pool as skewed as a rolling restart does, in seconds.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.cluster.cluster import Cluster
from tests.e2e.pool import OutsideBalancer, agent_status, pool_manifest
from tests.kube.faultproxy import FaultProxy
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
DRAIN = "connbalance.io/drain"
TOKEN = "fault-test-agent-token"
SELECTOR = "app.kubernetes.io/component=auth"
CLIENTS = 60
# Caps the tests hold the operator to; chosen so they bind in the first step of a skew of 60 on
# one pod of three (excess 40).
MAX_PER_STEP = 20
MAX_POOL_FRACTION = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def _api(kubeconfig: str) -> Any:
    return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(_api(str(cluster.kubeconfig)))


def plain(cluster: Cluster, obj: Any) -> Any:
    """A client model as the API server's JSON (camelCase keys), as kubectl prints it."""
    return _api(str(cluster.kubeconfig)).sanitize_for_serialization(obj)


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    done = cluster.run_kubectl(*args, stdin=stdin, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done


# -- the pool -------------------------------------------------------------------------------


def pool_documents(namespace: str, *, kind: str = "Deployment") -> list[dict[str, Any]]:
    """The e2e pool with an agent token (for method http) and, for StatefulSet, stable names."""
    docs = [d for d in yaml.safe_load_all(pool_manifest(namespace)) if d]
    workload = next(d for d in docs if d["kind"] == "Deployment")
    pod = workload["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    agent["args"] += ["--token-file", "/etc/agent-token/token"]
    agent["volumeMounts"] = [{"name": "agent-token", "mountPath": "/etc/agent-token"}]
    pod["volumes"] = [{"name": "agent-token", "secret": {"secretName": "agent-token"}}]
    if kind == "StatefulSet":
        workload["kind"] = "StatefulSet"
        spec = workload["spec"]
        spec.pop("strategy", None)
        spec["serviceName"] = "auth"
        spec["podManagementPolicy"] = "Parallel"
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "agent-token", "namespace": namespace},
              "stringData": {"token": TOKEN}}
    return [secret, *docs]


def balancer_manifest(namespace: str, prometheus: str, *, workload: str = "Deployment",
                      **overrides: Any) -> str:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "auth"}},
        "workloadRef": {"kind": workload, "name": "auth"},
        "metrics": {"preset": "teleport-auth", "maxStalenessSeconds": 20,
                    "prometheus": {"url": prometheus}},
        "balance": {"mode": "continuous", "settleSeconds": 2, "stepIntervalSeconds": 2,
                    "maxFractionPerStep": 0.5, "maxPoolFractionPerStep": MAX_POOL_FRACTION,
                    "maxConnectionsPerStep": MAX_PER_STEP, "minConnections": 10},
        "actuation": {"windowSeconds": 2, "quietMillis": 100, "deadlineSeconds": 10},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return yaml.safe_dump({"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                           "metadata": {"name": "auth", "namespace": namespace}, "spec": spec})


@dataclass
class Clients:
    """``connbalance_sim.clients`` as a process; its last JSON line holds its counters."""

    target: str
    count: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connbalance_sim.clients", "--target", self.target,
             "--count", str(self.count), "--ping", "1", "--backoff-ms", "200", "--report", "1",
             "--ramp", "2", "--lifetime", "7200"],
            stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        out.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(60)  # a loaded machine takes its time tearing down grpc
            self.process = None

    def counters(self) -> dict[str, Any]:
        lines = [x for x in self.log.read_text().splitlines() if x.startswith("{")]
        return dict(json.loads(lines[-1])) if lines else {}


@dataclass
class Pool:
    """The pool in a namespace, followed by the outside balancer, with its clients."""

    cluster: Cluster
    namespace: str
    kind: str = "Deployment"
    clients: int = CLIENTS
    outside: OutsideBalancer = field(default_factory=OutsideBalancer)
    target: str = ""
    uids: set[str] = field(default_factory=set)  # every pod uid ever seen: their state files
    only: str | None = None  # the one pod the balancer follows while skewing
    swarm: Clients | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _follower: threading.Thread | None = None

    def deploy(self) -> None:
        docs = pool_documents(self.namespace, kind=self.kind)
        kubectl(self.cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        kubectl(self.cluster, "rollout", "status", f"{self.kind.lower()}/auth", "-n",
                self.namespace, "--timeout=180s")
        self.target = self.outside.start()
        self._follower = threading.Thread(target=self._follow, daemon=True)
        self._follower.start()
        self.swarm = Clients(self.target, self.clients,
                             self.cluster.run_dir / "logs" / f"clients-{self.namespace}.log")
        self.swarm.start()
        try:
            eventually(lambda: sum(self.loads().values()) == self.clients,
                       what=f"all {self.clients} clients connected", timeout=120)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.swarm is not None:
            self.swarm.stop()
        self._stop.set()
        if self._follower is not None:
            self._follower.join(5)
            self.outside.stop()

    def pods(self) -> list[dict[str, Any]]:
        try:
            listed = core(self.cluster).list_namespaced_pod(self.namespace,
                                                            label_selector=SELECTOR)
        except (ApiException, OSError, HTTPError):
            return []
        items: list[dict[str, Any]] = plain(self.cluster, listed)["items"]
        self.uids.update(p["metadata"]["uid"] for p in items)
        return items

    def ready(self) -> dict[str, str]:
        """Ready pods, name -> IP."""
        out = {}
        for pod in self.pods():
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if not pod["metadata"].get("deletionTimestamp") and conditions.get("Ready") == "True":
                out[pod["metadata"]["name"]] = pod["status"]["podIP"]
        return out

    def _follow(self) -> None:
        while not self._stop.is_set():
            ready = self.ready()
            if self.only is not None:
                ready = {k: v for k, v in ready.items() if k == self.only}
            self.outside.follow(ready)
            self._stop.wait(0.5)

    def loads(self) -> dict[str, int]:
        """Connections each ready pod's agent holds now: the ground truth."""
        out = {}
        for name, ip in self.ready().items():
            try:
                out[name] = int(agent_status(ip)["active"])
            except (OSError, ValueError, KeyError):
                continue
        return out

    def skew(self, onto: str | None = None) -> str:
        """Every client on one pod (the first by name unless told), then all pods followed."""
        assert self.swarm is not None
        ready = self.ready()
        pod = onto or sorted(ready)[0]
        self.only = pod
        eventually(lambda: set(self.outside.balancer.ready()) == {pod} or None,
                   what=f"the balancer follows only {pod}", timeout=10, every=0.2)
        self.swarm.stop()
        self.swarm.start()
        eventually(lambda: self.loads().get(pod) == self.clients,
                   what=f"all clients on {pod}", timeout=90)
        self.only = None
        eventually(lambda: len(self.outside.balancer.ready()) == len(ready) or None,
                   what="the balancer follows every pod again", timeout=10, every=0.2)
        return pod


# -- the operator ---------------------------------------------------------------------------


@dataclass
class Operator:
    """``connbalance run`` as a process of its own, so a test can SIGKILL it."""

    kubeconfig: Path
    namespace: str
    log: Path
    leader_election: bool = False
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        args = [sys.executable, "-m", "connbalance", "run", "--kubeconfig", str(self.kubeconfig),
                "--namespace", self.namespace, "--liveness", "",
                "--metrics", f"127.0.0.1:{self.metrics_port}",
                "--default-prometheus-url", "http://127.0.0.1:9"]
        if self.leader_election:
            args += ["--leader-election", "on", "--lease-namespace", self.namespace]
        else:
            args += ["--leader-election", "off"]
        out = self.log.open("ab")
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                        env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        out.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup handler runs, as when a node dies."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3
            ) as got:
                return str(got.read().decode())
        except OSError:
            return ""

    def metric(self, name: str) -> float | None:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


# -- what the API server says ---------------------------------------------------------------


def balancer(cluster: Cluster, namespace: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(_api(str(cluster.kubeconfig)))
    try:
        return dict(custom.get_namespaced_custom_object(
            "connbalance.io", "v1alpha1", namespace, "connectionbalancers", "auth"))
    except (ApiException, OSError, HTTPError):
        return {}


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(balancer(cluster, namespace).get("status") or {})


def condition(cluster: Cluster, namespace: str, kind: str) -> dict[str, Any]:
    for item in status(cluster, namespace).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def events(cluster: Cluster, namespace: str, *, kind: str = "ConnectionBalancer",
           reason: str | None = None) -> list[dict[str, Any]]:
    listed = core(cluster).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind}")
    items = plain(cluster, listed)["items"]
    return [e for e in items if reason is None or e.get("reason") == reason]


def drain_annotations(pods: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod name -> the drain request it carries now."""
    out = {}
    for pod in pods:
        value = (pod["metadata"].get("annotations") or {}).get("connbalance.io/drain")
        if value:
            out[pod["metadata"]["name"]] = json.loads(value)
    return out


# -- the ledger -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acted:
    """One request as one agent recorded it, in the state file it keeps across restarts."""

    uid: str
    id: str
    count: int
    cycled: int
    state: str
    reason: str


def agents_ledger(uids: Iterable[str]) -> list[Acted]:
    """Every request every agent of these pods recorded: their state files outlive the agent
    processes and the pods (the manifest keeps them at /tmp/connbalance-e2e-<uid>.json)."""
    out = []
    for uid in sorted(set(uids)):
        path = Path(f"/tmp/connbalance-e2e-{uid}.json")
        if not path.exists():
            continue
        for entry in json.loads(path.read_text())["requests"]:
            out.append(Acted(uid=uid, id=entry["id"], count=int(entry["count"]),
                             cycled=int(entry.get("cycled", 0)), state=entry["state"],
                             reason=entry.get("reason", "")))
    return out


def assert_nothing_twice_and_caps_held(ledger: list[Acted], *, clients: int = CLIENTS,
                                       max_per_step: int = MAX_PER_STEP) -> None:
    """No id acted on by two agents (a replacement pod under the same name included); no step
    of one episode issued twice to a pod under a fresh id; no agent cycled more than asked;
    no request above the per-step cap; no step above the pool's share."""
    ids = [a.id for a in ledger]
    assert len(ids) == len(set(ids)), f"a request id acted on twice: {ids}"
    per_step: dict[tuple[str, str], int] = {}
    for acted in ledger:
        _, episode, step, _pod = acted.id.split(".", 3)
        assert acted.cycled <= acted.count, f"{acted.id} cycled {acted.cycled} of {acted.count}"
        assert acted.count <= max_per_step, f"{acted.id} asked {acted.count} > {max_per_step}"
        per_step[(episode, step)] = per_step.get((episode, step), 0) + acted.count
    budget = int(MAX_POOL_FRACTION * clients)
    over = {k: v for k, v in per_step.items() if v > budget}
    assert not over, f"steps over the pool budget of {budget}: {over}"


def acted_ids(ledger: list[Acted]) -> set[str]:
    return {a.id for a in ledger if a.state != "rejected"}


def delivered(proxy: FaultProxy, namespace: str) -> list[dict[str, Any]]:
    """The drain requests written onto pods through the proxy and accepted by the API server,
    in order, each with the pod it went to."""
    out = []
    for seen in proxy.requests("PATCH", rf"/api/v1/namespaces/{namespace}/pods/[^/]+",
                               body=DRAIN):
        if seen.status != 200:
            continue
        annotations = json.loads(seen.body)["metadata"]["annotations"]
        out.append({**json.loads(annotations[DRAIN]), "pod": seen.path.rsplit("/", 1)[1]})
    return out


def assert_no_pod_asked_again_within_a_cooldown(requests: list[dict[str, Any]], *,
                                                cooldown: float) -> None:
    """A step is measured before the next: never two requests to one pod closer than the
    drain window and a step interval, whatever crashed in between."""
    by_pod: dict[str, list[float]] = {}
    for request in requests:
        stamp = datetime.fromisoformat(request["issuedAt"].replace("Z", "+00:00")).timestamp()
        by_pod.setdefault(request["pod"], []).append(stamp)
    for pod, stamps in by_pod.items():
        stamps.sort()
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(g >= cooldown - 0.01 for g in gaps), f"{pod} asked again after {gaps}"


def pod_drain_events(cluster: Cluster, namespace: str) -> dict[str, int]:
    """Request id -> how many times the operator said, on the pod, that it delivered it."""
    counts: dict[str, int] = {}
    for event in events(cluster, namespace, kind="Pod", reason="DrainRequested"):
        rid = event["message"].rsplit("(", 1)[-1].rstrip(")")
        counts[rid] = counts.get(rid, 0) + (event.get("count") or 1)
    return counts


def wait_balanced(cluster: Cluster, namespace: str, pool: Pool, *, timeout: float = 150) -> None:
    eventually(
        lambda: status(cluster, namespace).get("phase") == "Balanced"
        and (loads := pool.loads()) and len(loads) == 3
        and max(loads.values()) <= 1.2 * sum(loads.values()) / len(loads),
        what="the pool balanced, as the operator and the agents both say", timeout=timeout)


@dataclass
class StatusRecorder:
    """Every distinct status the balancer showed, polled in a thread: what a person watching
    ``kubectl get connectionbalancer -w`` would have seen."""

    cluster: Cluster
    namespace: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StatusRecorder:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _poll(self) -> None:
        last: dict[str, Any] | None = None
        while not self._stop.is_set():
            now = status(self.cluster, self.namespace)
            if now and now != last:
                self.seen.append(now)
                last = now
            self._stop.wait(0.3)

    def phases(self) -> list[str]:
        return [str(s.get("phase")) for s in self.seen]

    def failed_conditions(self, kind: str) -> list[dict[str, Any]]:
        return [c for s in self.seen for c in s.get("conditions") or []
                if c.get("type") == kind and c.get("status") == "False"]


def wait_for(what: str, check: Any, timeout: float = 90) -> Any:
    return eventually(check, what=what, timeout=timeout)
