"""``make bench-operator``: what the operator itself costs at N ConnectionBalancers x M pods.

On a test cluster of its own (real kube-apiserver, etcd, kube-controller-manager, Prometheus;
the test kubelet runs each pod as ``sleep``), the chart's operator runs as the chart installs it,
with its ServiceAccount. Each balancer has a Deployment of M pods; one exporter in this process
serves every pod's load and acts on its drain requests (``loadmodel``). For each size it prints,
as one JSON document:

- the operator's resident memory, and its CPU seconds per minute while balanced and while
  rebalancing after a rollout of some of the Deployments;
- its API requests per minute by verb and resource, from the API server's audit log, whose
  policy records only the operator's namespace's ServiceAccounts; list calls and writes while
  balanced are counted apart (the Lease's renewals are the leader election's and shown apart);
- the PromQL queries it sent per tick (a counting proxy before Prometheus, and the operator's
  ``connbalance_reconciles_total``);
- the delay from each rolled-out Deployment's finished rollout to its first drain, p50 and p99.

``python -m tests.benchop.run --sizes 20x10,100x10`` (the make target), ``--sizes 2x3`` for a
small case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from connbalance.kube.index import rollout_complete
from tests.benchop import page
from tests.benchop.loadmodel import Exporter, LoadModel, SeenPod, seen_pod
from tests.cluster.cluster import Cluster, free_port
from tests.e2e.scenario_kit import Machine, metric, metrics_text, operator_pods, pod_process
from tests.faults.promproxy import PrometheusProxy

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "connbalance"
RELEASE = "cb"
POOL_NS = "bench"
PER_POD = 50
SCRAPE_INTERVAL = "5s"
SETTLE_SECONDS = 5
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts:{OPERATOR_NS}"]
- level: None
"""


@dataclass(frozen=True, slots=True)
class Size:
    balancers: int
    pods: int

    @classmethod
    def parse(cls, text: str) -> Size:
        left, sep, right = text.partition("x")
        if not sep or not left.isdigit() or not right.isdigit() or int(left) < 1 or int(right) < 2:
            raise argparse.ArgumentTypeError(f"--sizes: {text!r} is not NxM (N >= 1, M >= 2)")
        return cls(int(left), int(right))


def deployment(index: int, pods: int, port: int) -> dict[str, Any]:
    app = f"auth-{index}"
    template = {
        "metadata": {"labels": {"app": app},
                     "annotations": {"prometheus.io/scrape": "true",
                                     "prometheus.io/port": str(port)}},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "auth", "image": "none",
                                 "command": ["sleep", "infinity"]}]},
    }  # fmt: skip
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "namespace": POOL_NS},
            # Each new pod serves 3 s before the next is made, as a careful rollout does, so
            # the pods' loads move one step at a time (see loadmodel) and the pool ends skewed.
            "spec": {"replicas": pods, "minReadySeconds": 3,
                     "selector": {"matchLabels": {"app": app}}, "template": template}}  # fmt: skip


def balancer(index: int, prometheus: str) -> dict[str, Any]:
    app = f"auth-{index}"
    spec = {
        "selector": {"matchLabels": {"app": app}},
        "workloadRef": {"kind": "Deployment", "name": app},
        "metrics": {"preset": "teleport-auth", "maxStalenessSeconds": 30,
                    "prometheus": {"url": prometheus}},
        "balance": {"mode": "continuous", "settleSeconds": SETTLE_SECONDS,
                    "stepIntervalSeconds": 10, "maxFractionPerStep": 0.5,
                    "maxPoolFractionPerStep": 0.5},
        "actuation": {"windowSeconds": 2, "quietMillis": 100, "deadlineSeconds": 10},
    }  # fmt: skip
    return {"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
            "metadata": {"name": app, "namespace": POOL_NS}, "spec": spec}  # fmt: skip


@dataclass
class Watcher:
    """Lists the pool's pods and Deployments each second: feeds the load model, and notes when
    each rollout finished and when each Deployment's pods first carried a drain after it."""

    core: client.CoreV1Api
    apps: client.AppsV1Api
    model: LoadModel
    custom: client.CustomObjectsApi | None = None
    # Each balancer's (phase, reason) as last listed, and every change of it: (time, name, phase,
    # reason), so that a status write while balanced names what it said.
    statuses: dict[str, tuple[str, str]] = field(default_factory=dict)
    changes: list[tuple[float, str, str, str]] = field(default_factory=list)
    rolled_at: dict[str, float] = field(default_factory=dict)  # kubectl rollout restart
    finished_at: dict[str, float] = field(default_factory=dict)
    first_drain_at: dict[str, float] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _plain: client.ApiClient = field(default_factory=client.ApiClient)

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                pods = [seen_pod(p) for p in self.core.list_namespaced_pod(POOL_NS).items]
                workloads = self.apps.list_namespaced_deployment(POOL_NS).items
            except Exception as exc:  # a bench keeps going through an API hiccup
                print(f"bench: list failed: {exc}", file=sys.stderr)
                continue
            try:
                self.model.sync(pods)
            except Exception as exc:  # told, never silent: the figures after it would be wrong
                print(f"bench: the load model failed: {exc!r}", file=sys.stderr, flush=True)
                raise
            now = time.time()
            for item in workloads:
                name = item.metadata.name
                body = self._plain.sanitize_for_serialization(item)
                if (name in self.rolled_at and name not in self.finished_at
                        and rollout_complete("Deployment", body)):  # fmt: skip
                    self.finished_at[name] = now
            self._note_drains(pods)
            self._note_statuses()

    def _note_statuses(self) -> None:
        if self.custom is None:
            return
        try:
            listed = self.custom.list_namespaced_custom_object(
                "connbalance.io", "v1alpha1", POOL_NS, "connectionbalancers")["items"]
        except Exception as exc:  # a bench keeps going through an API hiccup
            print(f"bench: list failed: {exc}", file=sys.stderr)
            return
        now = time.time()
        for item in listed:
            status = item.get("status") or {}
            name = item["metadata"]["name"]
            seen = (str(status.get("phase")), str(status.get("reason") or ""))
            if name in self.statuses and self.statuses[name] != seen:
                self.changes.append((now, name, *seen))
            self.statuses[name] = seen

    def status_changes(self, start: float, end: float) -> dict[str, Any]:
        """The balancers' phase changes seen in [start, end): by phase, and a few reasons."""
        chosen = [c for c in self.changes if start <= c[0] < end]
        return {"by_phase": dict(sorted(Counter(phase for _, _, phase, _ in chosen).items())),
                "reasons": sorted({reason[:160] for _, _, _, reason in chosen})[:5]}  # fmt: skip

    def _note_drains(self, pods: list[SeenPod]) -> None:
        for pod in pods:
            drain = pod.drain or {}
            rid, issued = drain.get("id"), drain.get("issuedAt")
            if not isinstance(rid, str) or rid in self.known_ids:
                continue
            self.known_ids.add(rid)
            if pod.group in self.rolled_at and pod.group not in self.first_drain_at and issued:
                at = datetime.fromisoformat(str(issued).replace("Z", "+00:00")).timestamp()
                if at >= self.rolled_at[pod.group]:
                    self.first_drain_at[pod.group] = at


@dataclass
class OperatorProcess:
    """The chart's operator pod's process: its memory, CPU time and metrics."""

    pid: int
    ip: str

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reconciles(self) -> float:
        return sum(metric(metrics_text(self.ip), "connbalance_reconciles_total"))


@dataclass
class Window:
    """What the operator spent between two moments."""

    start: float
    cpu: float
    queries: int
    reconciles: float

    @classmethod
    def open(cls, operator: OperatorProcess, proxy: PrometheusProxy) -> Window:
        return cls(time.time(), operator.cpu_seconds(), proxy.queries, operator.reconciles())

    def close(self, operator: OperatorProcess, proxy: PrometheusProxy, audit: Path,
              core: client.CoreV1Api) -> dict[str, Any]:
        end, cpu = time.time(), operator.cpu_seconds() - self.cpu
        minutes = (end - self.start) / 60
        ticks = operator.reconciles() - self.reconciles
        queries = proxy.queries - self.queries
        requests = audit_requests(audit, self.start, end)
        by_verb = Counter(f"{verb} {resource}" for verb, resource, _ in requests)
        lease = sum(n for k, n in by_verb.items() if k.endswith(" leases"))
        writes = sum(n for k, n in by_verb.items() if k.split()[0] in WRITES
                     and not k.endswith(" leases"))  # fmt: skip
        return {
            "seconds": round(end - self.start, 1),
            "cpu_seconds_per_minute": round(cpu / minutes, 2),
            "cpu_share_of_a_core": round(cpu / (end - self.start), 4),
            "reconciles": int(ticks),
            "promql_queries": queries,
            "promql_queries_per_tick": round(queries / ticks, 2) if ticks else None,
            "api_requests_per_minute": round(len(requests) / minutes, 1),
            "api_requests_per_minute_by_verb": {k: round(n / minutes, 1)
                                                for k, n in sorted(by_verb.items())},
            "list_calls": sum(n for k, n in by_verb.items() if k.startswith("list ")),
            "writes_besides_the_lease": writes,
            "lease_writes": lease,
            "balancers_whose_status_was_patched": len(
                {name for verb, resource, name in requests
                 if verb == "patch" and resource == "connectionbalancers"}),
            "events_by_reason": events_by_reason(core, self.start, end),
            "rss_mib": round(operator.rss_mib(), 1),
        }  # fmt: skip


def events_by_reason(core: client.CoreV1Api, start: float, end: float) -> dict[str, int]:
    """The Events the operator posted in the pool's namespace in [start, end), by reason: what
    a write while balanced was about."""
    listed = core.list_namespaced_event(POOL_NS).items
    reasons = Counter(
        str(e.reason) for e in listed
        if start <= e.metadata.creation_timestamp.timestamp() < end
    )  # fmt: skip
    return dict(sorted(reasons.items()))


WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def audit_requests(audit: Path, start: float, end: float) -> list[tuple[str, str, str]]:
    """(verb, resource, name) of each request the audit log recorded as received in
    [start, end)."""
    found: dict[str, tuple[str, str, str]] = {}
    if not audit.exists():
        return []
    for line in audit.read_text().splitlines():
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        except (ValueError, KeyError):
            continue
        if start <= at.timestamp() < end and event.get("auditID") not in found:
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", ""))
            found[event["auditID"]] = (str(event.get("verb")), str(resource),
                                       str(ref.get("name", "")))
    return list(found.values())


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


class Bench:
    def __init__(self, cluster: Cluster, size: Size, *, steady: float, rollouts: int) -> None:
        self.cluster, self.size, self.steady, self.rollouts = cluster, size, steady, rollouts
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.watcher: Watcher | None = None

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = self.cluster.run_kubectl(*args, stdin=stdin, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def wait(self, what: str, check: Any, timeout: float,
             explain: Callable[[], str] = lambda: "") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.watcher is not None and not self.watcher.alive:
                raise RuntimeError(f"bench: the pool's watcher stopped while waiting: {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: not within {timeout:.0f}s: {what}{explain()}")
            time.sleep(1.0)
        print(f"bench: {what}", file=sys.stderr, flush=True)

    def run(self, operator: OperatorProcess, proxy: PrometheusProxy) -> dict[str, Any]:
        size = self.size
        model = LoadModel(per_pod=PER_POD)
        port = free_port()
        exporter = Exporter(model, port).start()
        watcher = self.watcher = Watcher(self.core, self.apps, model, self.custom).start()
        try:
            docs = [deployment(i, size.pods, port) for i in range(size.balancers)]
            self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
            total = size.balancers * size.pods
            self.wait(f"{total} pods hold their load",
                      lambda: sum(len(g) for g in model.groups().values()) == total
                      and all(len(g) == size.pods for g in model.groups().values()),
                      timeout=120 + total * 0.6)  # fmt: skip
            model.filling = False
            started = operator.rss_mib()
            docs = [balancer(i, proxy.url) for i in range(size.balancers)]
            self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
            self.wait("every balancer Balanced", lambda: self.phases() == {"Balanced"},
                      timeout=180 + total * 0.2)  # fmt: skip
            time.sleep(10)  # past the first writes of each balancer's status
            window = Window.open(operator, proxy)
            time.sleep(self.steady)
            balanced = window.close(operator, proxy, self.cluster.audit_log, self.core)
            balanced["status_changes"] = watcher.status_changes(window.start, time.time())
            rebalancing = self.roll_out(operator, proxy, watcher, model)
        finally:
            watcher.stop()
            exporter.stop()
        delays = [watcher.first_drain_at[d] - watcher.finished_at[d]
                  for d in watcher.finished_at if d in watcher.first_drain_at]  # fmt: skip
        return {
            "balancers": size.balancers, "pods_per_balancer": size.pods,
            "rss_mib": {"at_start": round(started, 1), "at_end": round(operator.rss_mib(), 1)},
            "balanced": balanced,
            "rebalancing": rebalancing,
            "rollout_to_first_drain_seconds": {
                "rollouts": len(watcher.rolled_at), "finished": len(watcher.finished_at),
                "drained": len(delays), "p50": percentile(delays, 0.5),
                "p99": percentile(delays, 0.99),
                "settle_seconds": SETTLE_SECONDS,
            },
            "exporter_scrapes": exporter.scrapes,
        }  # fmt: skip

    def roll_out(self, operator: OperatorProcess, proxy: PrometheusProxy, watcher: Watcher,
                 model: LoadModel) -> dict[str, Any]:
        chosen = [f"auth-{i}" for i in range(min(self.rollouts, self.size.balancers))]
        window = Window.open(operator, proxy)
        for name in chosen:
            watcher.rolled_at[name] = time.time()
            self.kubectl("rollout", "restart", f"deployment/{name}", "-n", POOL_NS)
        self.wait(f"{len(chosen)} rollouts finished",
                  lambda: set(chosen) <= set(watcher.finished_at), timeout=300)  # fmt: skip
        skews = [skew(model.groups().get(name, {})) for name in chosen]
        left: set[str] = set()

        def balanced_again() -> bool:
            phases = self.phases_by_name()
            left.update(n for n in chosen if phases.get(n) != "Balanced")
            return left == set(chosen) and set(phases.values()) == {"Balanced"}

        def stuck() -> str:
            body = {item["metadata"]["name"]: item.get("status") or {}
                    for item in self.custom.list_namespaced_custom_object(
                        "connbalance.io", "v1alpha1", POOL_NS, "connectionbalancers")["items"]}
            never = sorted(set(chosen) - left)
            others = {n: (st.get("phase"), st.get("message") or st.get("reason"))
                      for n, st in sorted(body.items()) if st.get("phase") != "Balanced"}
            return f"; never left Balanced: {never}; not Balanced now: {others}"

        self.wait("every rolled-out balancer left Balanced and came back", balanced_again,
                  timeout=300, explain=stuck)  # fmt: skip
        figures = window.close(operator, proxy, self.cluster.audit_log, self.core)
        figures["skew_after_rollout_median"] = round(statistics.median(skews), 3)
        figures["rolled_out"] = len(chosen)
        figures["connections_moved_by_drains"] = model.moved_by_drains
        return figures

    def phases(self) -> set[str]:
        return set(self.phases_by_name().values())

    def phases_by_name(self) -> dict[str, str]:
        listed = self.custom.list_namespaced_custom_object(
            "connbalance.io", "v1alpha1", POOL_NS, "connectionbalancers")
        return {item["metadata"]["name"]: str((item.get("status") or {}).get("phase"))
                for item in listed["items"]}  # fmt: skip


def skew(loads: dict[str, int]) -> float:
    values = list(loads.values())
    mean = sum(values) / len(values) if values else 0
    return max(values) / mean if mean else 0.0


def install_operator(cluster: Cluster, helm: str) -> OperatorProcess:
    for namespace in (OPERATOR_NS, POOL_NS):  # the chart's Roles go into the watched one
        cluster.run_kubectl("create", "namespace", namespace)
    done = subprocess.run(
        [helm, "install", RELEASE, str(ROOT / "charts" / "connbalance"), "--namespace",
         OPERATOR_NS, "--set", f"watchNamespaces={{{POOL_NS}}}", "--set", "replicaCount=1",
         "--wait", "--timeout", "150s", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=200, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"helm install: {done.stderr.strip()}")
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    (pod,) = operator_pods(client.CoreV1Api(api), OPERATOR_NS, RELEASE)
    return OperatorProcess(pid=pod_process(OPERATOR_NS, pod.name, argv_has="run"), ip=pod.ip)


def measure(size: Size, *, steady: float, rollouts: int, helm: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        policy = Path(tmp) / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        cluster = Cluster(run_dir=Path(tmp) / "cluster", audit_policy=policy,
                          scrape_interval=SCRAPE_INTERVAL)  # fmt: skip
        cluster.start()
        proxy = PrometheusProxy(upstream=cluster.prometheus_url).start()
        try:
            operator = install_operator(cluster, helm)
            return Bench(cluster, size, steady=steady, rollouts=rollouts).run(operator, proxy)
        finally:
            proxy.stop()
            cluster.stop()
            if cluster.audit_log.exists() and os.environ.get("BENCH_OPERATOR_KEEP_AUDIT"):
                Path(os.environ["BENCH_OPERATOR_KEEP_AUDIT"]).write_bytes(
                    cluster.audit_log.read_bytes())


GOALS = {"rss_mib_under": 150, "cpu_share_balanced_under": 0.05, "list_calls_balanced": 0,
         "writes_balanced": 0, "promql_queries_per_tick_at_most": 1}  # fmt: skip


def judged(result: dict[str, Any]) -> dict[str, bool]:
    balanced = result["balanced"]
    per_tick = balanced["promql_queries_per_tick"]
    return {
        "rss_mib_under": max(result["rss_mib"].values()) < GOALS["rss_mib_under"],
        "cpu_share_balanced_under": balanced["cpu_share_of_a_core"]
        < GOALS["cpu_share_balanced_under"],
        "list_calls_balanced": balanced["list_calls"] == 0,
        "writes_balanced": balanced["writes_besides_the_lease"] == 0,
        "promql_queries_per_tick_at_most": per_tick is not None
        and per_tick <= GOALS["promql_queries_per_tick_at_most"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20x10,100x10",
                        type=lambda t: [Size.parse(s) for s in t.split(",") if s])
    parser.add_argument("--steady-seconds", type=float, default=120.0)
    parser.add_argument("--rollouts", type=int, default=10,
                        help="Deployments rolled out at once, to measure rebalancing")
    parser.add_argument("--docs", type=Path,
                        help="also write this page from the figures, and the JSON beside it")
    args = parser.parse_args(argv)
    helm = os.environ.get("CONNBALANCE_HELM", "")
    if not helm or not Path(helm).is_file():
        parser.error("CONNBALANCE_HELM must name a helm binary (make bench-operator sets it)")
    machine = Machine()
    runs = []
    for size in args.sizes:
        print(f"bench: {size.balancers} balancers x {size.pods} pods", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # the cluster's progress; stdout is JSON
            result = measure(size, steady=args.steady_seconds, rollouts=args.rollouts, helm=helm)
        result["goals_met"] = judged(result)
        runs.append(result)
    doc = {"bench": "operator", "goals": GOALS, "runs": runs, "machine": machine.to_json(),
           "settings": {"scrape_interval": SCRAPE_INTERVAL, "steady_seconds": args.steady_seconds,
                        "connections_per_pod": PER_POD}}  # fmt: skip
    print(json.dumps(doc, indent=2))
    if args.docs is not None:
        args.docs.write_text(page.render(doc))
        args.docs.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
