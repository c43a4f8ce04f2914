"""What the operator's end-to-end scenarios share, on the test cluster.

- the chart installed into a namespace and watching only it (``chart_installed``), the CRD;
- balancer manifests with the short settle, step and window settings a test can afford;
- ``Endpoints``: the auth Service's live EndpointSlices, watched, their ready endpoints handed
  to the outside balancer as target registration would;
- ``ClientFleet``: the grpcio clients as a process, its JSON reports read as they come;
- ``AgentWatch``: every agent's ``/status`` sampled a few times a second: each pod's load, and
  each drain request with when it was first seen and what the pod carried just before;
- the operator's pods, their metrics, the Lease holder, and a pod's own process (the test
  kubelet runs containers as local processes) to SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from tests.cluster.cluster import Cluster
from tests.e2e.pool import OutsideBalancer, agent_status

ROOT = Path(__file__).resolve().parents[2]
POOL_LABELS = {"app.kubernetes.io/component": "auth"}
LEASE = "connbalance-leader"
DRAIN_ANNOTATION = "connbalance.io/drain"
PAUSE_ANNOTATION = "connbalance.io/paused"


# -- kubectl, helm and the CRD ----------------------------------------------------------------


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    """kubectl's output; a failure fails the test with kubectl's own message."""
    done = cluster.run_kubectl(*args, stdin=stdin, check=False)
    if done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def kubectl_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, *args, "-o", "json"))


def apply_crd(cluster: Cluster) -> None:
    kubectl(cluster, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kubectl(cluster, "wait", "--for=condition=Established", "--timeout=50s",
            "crd/connectionbalancers.connbalance.io")  # fmt: skip


def helm_binary() -> str:
    helm = os.environ.get("CONNBALANCE_HELM", "")
    if not helm or not Path(helm).is_file():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return helm


def helm(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def chart_installed(
    cluster: Cluster, namespace: str, *, replicas: int = 1, log_level: str = "INFO"
) -> Iterator[str]:
    """The chart installed into ``namespace``, watching only it, with its ServiceAccount and
    RBAC; yields the release name and uninstalls it after."""
    release = f"cb-{namespace}"
    done = helm(
        cluster, "install", release, str(ROOT / "charts" / "connbalance"),
        "--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"replicaCount={replicas}", "--set", f"logLevel={log_level}",
        "--wait", "--timeout", "150s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        yield release
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, timeout=120)


# -- balancers ----------------------------------------------------------------------------------


def balancer_manifest(
    namespace: str,
    name: str = "auth",
    *,
    annotations: Mapping[str, str] | None = None,
    **spec: Any,
) -> str:
    body = {"selector": {"matchLabels": dict(POOL_LABELS)}, **spec}
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    return yaml.safe_dump(
        {"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
         "metadata": meta, "spec": body}
    )  # fmt: skip


def quick_spec(prometheus_url: str, **changes: Any) -> dict[str, Any]:
    """A balancer of the pool that acts within seconds: 3 s to settle, 3 s between steps, a 2 s
    window. ``changes`` are merged in one level deep (``balance={"maxSteps": 4}``)."""
    spec: dict[str, Any] = {
        "workloadRef": {"kind": "Deployment", "name": "auth"},
        "metrics": {"preset": "teleport-auth", "maxStalenessSeconds": 30,
                    "prometheus": {"url": prometheus_url}},
        "balance": {"settleSeconds": 3, "stepIntervalSeconds": 3, "maxFractionPerStep": 0.5,
                    "maxPoolFractionPerStep": 0.5, "minConnections": 10},
        "actuation": {"windowSeconds": 2, "quietMillis": 100, "deadlineSeconds": 10},
    }  # fmt: skip
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def cooldown(spec: Mapping[str, Any]) -> float:
    """From one step to the next: the window, then a step interval (the issuer's rule)."""
    return float(spec["actuation"]["windowSeconds"]) + float(spec["balance"]["stepIntervalSeconds"])


def balancer(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl_json(cluster, "get", "connectionbalancer", name, "-n", namespace))


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(balancer(cluster, namespace, name).get("status") or {})


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The named condition in a status ({} when absent)."""
    return next((dict(c) for c in status.get("conditions") or [] if c.get("type") == kind), {})


def events(cluster: Cluster, namespace: str, *, kind: str, name: str | None = None) -> list[Any]:
    selector = f"involvedObject.kind={kind}" + (f",involvedObject.name={name}" if name else "")
    found = kubectl_json(cluster, "get", "events", "-n", namespace, "--field-selector", selector)
    return list(found["items"])


# -- the pool's load --------------------------------------------------------------------------


def skew(loads: Mapping[str, int]) -> float:
    mean = sum(loads.values()) / len(loads) if loads else 0.0
    return max(loads.values()) / mean if mean else 0.0


def above_mean(loads: Mapping[str, int]) -> int:
    """Connections that must move for an even pool: the load above the mean."""
    mean = sum(loads.values()) / len(loads) if loads else 0.0
    return round(sum(max(0.0, load - mean) for load in loads.values()))


class Endpoints:
    """The Service's ready endpoints, from its live EndpointSlices (``discovery.k8s.io/v1``,
    label ``kubernetes.io/service-name``), kept by a watch; every change is handed to
    ``on_change`` (pod name -> address, and the port the slice names)."""

    def __init__(
        self, api: client.ApiClient, *, namespace: str, service: str,
        on_change: Callable[[dict[str, str], int], None],
    ) -> None:  # fmt: skip
        self._discovery = client.DiscoveryV1Api(api)
        self._namespace, self._service = namespace, service
        self._on_change = on_change
        self._slices: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._ready: dict[str, str] = {}
        self.first_ready: dict[str, float] = {}  # pod -> when it first became a ready endpoint
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="endpoints")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def ready(self) -> dict[str, str]:
        with self._lock:
            return dict(self._ready)

    def _run(self) -> None:
        selector = f"kubernetes.io/service-name={self._service}"
        while not self._stop.is_set():
            try:
                listed = self._discovery.list_namespaced_endpoint_slice(
                    self._namespace, label_selector=selector
                )
                self._slices = {s.metadata.name: s for s in listed.items}
                self._changed()
                version = listed.metadata.resource_version
                while not self._stop.is_set():
                    stream = watch.Watch().stream(
                        self._discovery.list_namespaced_endpoint_slice, self._namespace,
                        label_selector=selector, resource_version=version, timeout_seconds=2,
                        _request_timeout=10,
                    )  # fmt: skip
                    for event in stream:
                        obj = event["object"]
                        if event["type"] == "ERROR":  # 410 Gone: list again
                            raise ValueError(f"watch: {obj}")
                        version = obj.metadata.resource_version
                        if event["type"] == "DELETED":
                            self._slices.pop(obj.metadata.name, None)
                        else:
                            self._slices[obj.metadata.name] = obj
                        self._changed()
            except Exception:  # 410 Gone, a broken stream, a read timeout: list again
                self.errors += 1
                self._stop.wait(0.2)

    def _changed(self) -> None:
        ready, port = {}, 0
        for piece in self._slices.values():
            port = next((p.port for p in piece.ports or [] if p.port), port)
            for endpoint in piece.endpoints or []:
                conditions = endpoint.conditions
                if conditions is None or conditions.ready is not True or not endpoint.addresses:
                    continue
                name = endpoint.target_ref.name if endpoint.target_ref else endpoint.addresses[0]
                ready[name] = endpoint.addresses[0]
        now = time.time()
        with self._lock:
            for name in ready:
                self.first_ready.setdefault(name, now)
            changed = ready != self._ready
            self._ready = ready
        if changed and port:
            self._on_change(ready, port)


def following(outside: OutsideBalancer, api: client.ApiClient, namespace: str) -> Endpoints:
    """Endpoints of the ``auth`` Service, feeding ``outside``'s backends."""
    return Endpoints(
        api, namespace=namespace, service="auth",
        on_change=lambda pods, port: outside.follow(pods, port=port),
    )  # fmt: skip


@dataclass(slots=True)
class Request:
    """A drain request as the agents showed it: where, how many, when first seen, and the
    largest load of its pod (and of the pool) in the seconds before."""

    id: str
    pod: str
    count: int
    first_seen: float
    pod_peak: int
    pool_peak: int
    cycled: int = 0
    state: str = ""

    @property
    def step(self) -> tuple[str, int]:
        """(episode, step) from ``cb.<episode>.<step>.<pod>``."""
        _, episode, step, _ = self.id.split(".", 3)
        return episode, int(step)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    loads: dict[str, int]


class AgentWatch:
    """Every ready pod's agent ``/status``, sampled every ``every`` seconds in a thread."""

    PEAK_SECONDS = 4.0

    def __init__(self, endpoints: Endpoints, *, every: float = 0.3) -> None:
        self._endpoints = endpoints
        self._every = every
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        self._requests: dict[str, Request] = {}
        self._seen_on: dict[str, set[str]] = {}  # request id -> pods whose agent listed it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="agents")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            loads, listed = {}, {}
            for pod, ip in self._endpoints.ready().items():
                try:
                    answer = agent_status(ip)
                    loads[pod] = int(answer["active"])
                    listed[pod] = list(answer.get("requests") or [])
                except Exception:  # a pod going away, or too slow to answer: not this round
                    continue
            self._record(time.time(), loads, listed)

    def _record(self, now: float, loads: dict[str, int], listed: dict[str, list[Any]]) -> None:
        with self._lock:
            recent = [s for s in self.samples if s.at >= now - self.PEAK_SECONDS]
            for pod, requests in listed.items():
                for entry in requests:
                    rid = str(entry["id"])
                    self._seen_on.setdefault(rid, set()).add(pod)
                    known = self._requests.get(rid)
                    if known is None:
                        known = self._requests[rid] = Request(
                            id=rid, pod=pod, count=int(entry["count"]), first_seen=now,
                            pod_peak=max([s.loads.get(pod, 0) for s in recent], default=0),
                            pool_peak=max([sum(s.loads.values()) for s in recent], default=0),
                        )  # fmt: skip
                    known.cycled, known.state = int(entry.get("cycled", 0)), str(entry["state"])
            self.samples.append(Sample(at=now, loads=loads))

    def loads(self) -> dict[str, int]:
        with self._lock:
            return dict(self.samples[-1].loads) if self.samples else {}

    def requests(self, *, since: float = 0.0) -> list[Request]:
        """Requests first seen at or after ``since``, oldest first."""
        with self._lock:
            found = [r for r in self._requests.values() if r.first_seen >= since]
        return sorted(found, key=lambda r: (r.first_seen, r.id))

    def pods_listing(self, request_id: str) -> set[str]:
        with self._lock:
            return set(self._seen_on.get(request_id, set()))

    def samples_between(self, start: float, end: float = float("inf")) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.at <= end]


def stays(check: Callable[[], Any], *, seconds: float, what: str, every: float = 0.3) -> None:
    """Fails as soon as ``check`` is falsy within ``seconds`` (the opposite of eventually)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if not result:
            pytest.fail(f"{what} stopped holding within {seconds:.0f}s")
        time.sleep(every)


# -- clients ------------------------------------------------------------------------------------


class ClientFleet:
    """``python -m connbalance_sim.clients`` as a process; every report it prints (one a second:
    counters since it started, also per group with ``--failfast``) kept with its time."""

    def __init__(self, target: str, *, count: int, failfast: int = 0) -> None:
        argv = [
            sys.executable, "-m", "connbalance_sim.clients", "--target", target,
            "--count", str(count), "--ping", "1", "--backoff-ms", "200", "--report", "1",
            "--ramp", "3", "--lifetime", "1800",
        ]  # fmt: skip
        if failfast:
            argv += ["--failfast", str(failfast)]
        self.count, self.failfast = count, failfast
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._reports: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="clients")
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                with self._lock:
                    self._reports.append(report)

    def counters(self, at: float | None = None) -> dict[str, dict[str, int]]:
        """Calls per group (``retry``, ``failfast``) and ``all`` (see ``_calls``), as the last
        report at or before ``at`` (default: the latest) counted them."""
        with self._lock:
            made = [r for r in self._reports if at is None or float(r.get("t", 0)) <= at]
        report = made[-1] if made else {}
        out = {"all": _calls(report)}
        for group, counters in (report.get("groups") or {}).items():
            out[str(group)] = _calls(counters)
        return out

    def calls_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """What the reports counted from ``start`` to ``end`` (to a report, a second or so)."""
        return difference(self.counters(end), self.counters(start))

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(5)
        if self._process.stdout is not None:
            self._process.stdout.close()


def _calls(counters: Mapping[str, Any]) -> dict[str, int]:
    """Calls made and failed, and the failed by status code (``code:Unavailable``) and, where
    the fleet says, by cause (``cause:backoff``)."""
    out = {k: int(counters.get(k, 0)) for k in ("calls_ok", "calls_failed")}
    for prefix, key in (("code", "failed_by_code"), ("cause", "failed_by_cause")):
        for name, count in (counters.get(key) or {}).items():
            out[f"{prefix}:{name}"] = int(count)
    return out


def difference(
    after: Mapping[str, Mapping[str, int]], before: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        group: {
            k: v - before.get(group, {}).get(k, 0)
            for k, v in counters.items()
            if v != before.get(group, {}).get(k, 0) or not k.startswith(("code:", "cause:"))
        }
        for group, counters in after.items()
    }


# -- the operator's pods ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorPod:
    name: str
    ip: str
    restarts: int


def operator_pods(core: client.CoreV1Api, namespace: str, release: str) -> list[OperatorPod]:
    listed = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={release}"
    )
    return sorted(
        (OperatorPod(name=p.metadata.name, ip=p.status.pod_ip or "",
                     restarts=sum(c.restart_count for c in p.status.container_statuses or []))
         for p in listed.items if p.metadata.deletion_timestamp is None),
        key=lambda p: p.name,
    )  # fmt: skip


def metrics_text(ip: str, port: int = 9090) -> str:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=3) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric(text: str, name: str, **labels: str) -> list[float]:
    """The values of every series ``name`` whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(match["value"]))
    return found


def leaders(pods: list[OperatorPod]) -> list[str]:
    """The operator pods whose own metrics say they hold the Lease."""
    return [p.name for p in pods if metric(metrics_text(p.ip), "connbalance_leader") == [1.0]]


def lease_holder(cluster: Cluster, namespace: str) -> str | None:
    done = cluster.run_kubectl("get", "lease", LEASE, "-n", namespace, "-o",
                               "jsonpath={.spec.holderIdentity}", check=False)  # fmt: skip
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def pod_process(namespace: str, pod: str, *, argv_has: str) -> int:
    """The PID of the pod's container process whose command line has ``argv_has``: the test
    kubelet starts each container as a local process with POD_NAME and POD_NAMESPACE set."""
    wanted = {f"POD_NAME={pod}".encode(), f"POD_NAMESPACE={namespace}".encode()}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted <= environ and argv_has.encode() in argv:
            found.append(int(proc.name))
    if len(found) != 1:
        pytest.fail(f"want one process of pod {namespace}/{pod} running {argv_has!r}: {found}")
    return found[0]


@dataclass(slots=True)
class Machine:
    """The machine and its load, kept beside every figure."""

    cpus: int = field(default_factory=lambda: os.cpu_count() or 0)
    cpu_model: str = field(default_factory=lambda: _cpu_model())
    kernel: str = field(default_factory=lambda: os.uname().release)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "cpu_model": self.cpu_model, "kernel": self.kernel,
                "python": sys.version.split()[0],
                "load_average": {"start": [round(x, 2) for x in self.load_at_start],
                                 "end": [round(x, 2) for x in os.getloadavg()]}}  # fmt: skip


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"
