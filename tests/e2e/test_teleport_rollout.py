"""The Teleport path end to end on the test cluster, with and without steering (issue 10, item 6).

The auth pods are shaped like the teleport-cluster chart's render (``teleport_pool.py``: strategy
``maxSurge: 0, maxUnavailable: 1``, the ports, no automounted token, the preStop wait), with the
recipe's sidecar and volumes read verbatim from docs/teleport/values.yaml: the agent in reset
mode, steering with nftables, its requests arriving through the downward-API annotations file.
The operator is the chart's, installed with helm into the test namespace; the ConnectionBalancer
is the recipe's (preset ``teleport-auth``, workloadRef ``teleport-auth``) with test-sized
timings. Clients reach the pods as Teleport's agents do: through a proxy that dials a ready
endpoint of the auth Service's live EndpointSlices and dials another when one refuses
(``proxy_dial.py``), a grpcio fleet behind one and a grpc-go fleet behind another.

One install serves both runs: ``kubectl rollout restart`` with the agent steering, then the same
with ``actuation.steering: none``. With ``CONNBALANCE_TELEPORT_FIGURES=<path>`` the figures of both
runs are written there as JSON (``teleport_figures.py`` renders them into docs/teleport.md).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.e2e.proxy_dial import EndpointFollower, ProxyDial
from tests.e2e.rollout_fleets import Fleet, FleetSpec, Report, delta
from tests.e2e.teleport_pool import AGENT_PORT, ROOT, auth_manifest
from tests.goclients import build
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

FIGURES_ENV = "CONNBALANCE_TELEPORT_FIGURES"
RELEASE, DEPLOYMENT, BALANCER = "teleport", "teleport-auth", "teleport-auth"
SELECTOR = "app.kubernetes.io/instance=teleport,app.kubernetes.io/component=auth"
FLEETS = (
    FleetSpec(name="grpcio", count=120, failfast=40),
    FleetSpec(name="go", count=90, failfast=30),
)
TOTAL = sum(f.count for f in FLEETS)
# Clients a moment away from their stream when a sample is taken do not make a pool unfull.
SLACK = 3
TOLERANCE = 0.10
# Test-sized: the chart's preStop wait of 30 s and grace of 60 s, through the module's own knobs.
POOL = {
    "grace_seconds": 10,
    "prestop_seconds": 2,
    "min_ready_seconds": 0,
    "probe_period_seconds": 1,
}
BALANCE = {
    "settleSeconds": 5,
    "stepIntervalSeconds": 4,
    "maxFractionPerStep": 0.5,
    "maxPoolFractionPerStep": 0.5,
    "minConnections": 10,
}
# A window of a few seconds: the refusal outlasts it by 1 s, and on a loaded machine a reconnect
# made near its end may take longer than that, then land on the shedding pod again.
ACTUATION = {"windowSeconds": 6, "quietMillis": 100, "deadlineSeconds": 30}
SAMPLE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    """The pool as the agents count it: open connections and cycled totals of each Ready pod,
    and the pods whose drain annotation is set."""

    at: float  # monotonic seconds
    loads: dict[str, int]
    cycled: dict[str, int]
    drained: frozenset[str]
    reports: dict[str, Report]  # each fleet's last report line

    def full(self) -> bool:
        return len(self.loads) == 3 and sum(self.loads.values()) >= TOTAL - SLACK

    def skew(self) -> float:
        mean = sum(self.loads.values()) / len(self.loads) if self.loads else 0.0
        return max(self.loads.values()) / mean if mean else 0.0

    def excess(self) -> float:
        mean = sum(self.loads.values()) / len(self.loads)
        return sum(max(0.0, load - mean) for load in self.loads.values())


def agent_status(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}:{AGENT_PORT}/status", timeout=2) as response:
        return dict(json.loads(response.read()))


class Sampler:
    """Samples the pool every ``SAMPLE_SECONDS`` in a thread."""

    def __init__(self, core: client.CoreV1Api, namespace: str, fleets: dict[str, Fleet]) -> None:
        self._core, self._namespace, self._fleets = core, namespace, fleets
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.samples.append(self._sample())
            except (OSError, client.ApiException):
                continue  # a pod going away between the list and the ask

    def _sample(self) -> Sample:
        pods = self._core.list_namespaced_pod(self._namespace, label_selector=SELECTOR).items
        loads, cycled, drained = {}, {}, set()
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                continue
            if (pod.metadata.annotations or {}).get("connbalance.io/drain"):
                drained.add(pod.metadata.name)
            ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready")
            if ready != "True" or not pod.status.pod_ip:
                continue
            status = agent_status(pod.status.pod_ip)
            loads[pod.metadata.name] = int(status["active"])
            cycled[pod.metadata.name] = int(status["cycled_total"])
        reports = {name: fleet.latest for name, fleet in self._fleets.items()}
        return Sample(time.monotonic(), loads, cycled, frozenset(drained), reports)


@dataclass
class Scenario:
    cluster: Cluster
    namespace: str
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    sampler: Sampler
    fleets: dict[str, Fleet]
    proxies: dict[str, ProxyDial]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def kubectl(self, *args: str) -> str:
        return str(self.cluster.run_kubectl("-n", self.namespace, *args).stdout)

    def balancer(self) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(
                "connbalance.io", "v1alpha1", self.namespace, "connectionbalancers", BALANCER
            )
        )

    def pod_names(self) -> set[str]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR).items
        return {pod.metadata.name for pod in pods}

    def rollout(self, *, steering: str) -> dict[str, Any]:
        """One ``kubectl rollout restart`` until the operator has the pool balanced again."""
        old_pods = self.pod_names()
        proxies_before = {name: p.snapshot() for name, p in self.proxies.items()}
        requested_before = _requested(self.balancer())
        load_start = os.getloadavg()
        started, started_wall = time.monotonic(), time.time()
        self.kubectl("rollout", "restart", f"deployment/{DEPLOYMENT}")
        self.kubectl("rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=240s")
        done, done_wall = time.monotonic(), time.time()

        def balanced() -> dict[str, Any] | None:
            body = self.balancer()
            latest = self.sampler.latest()
            if (
                body.get("status", {}).get("phase") == "Balanced"
                and _requested(body) > requested_before
                and latest is not None
                and latest.at > done
                and latest.full()
                and latest.skew() <= 1 + TOLERANCE
                and not (set(latest.loads) & old_pods)
            ):
                return body
            return None

        body = eventually(balanced, what=f"the pool balanced again ({steering})", timeout=240)
        time.sleep(2 * SAMPLE_SECONDS)  # one more sample, after the last close
        samples = [s for s in self.sampler.samples if s.at >= started]
        run = figures(samples, old_pods=old_pods, started=started, done=done, steering=steering)
        run["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
        run["requested"] = _requested(body) - requested_before
        # The go fleet's failed calls one by one, timed from the rollout's end: which phase and
        # which cause (its message) each came from.
        run["go_failures"] = [
            {
                "after_rollout_end": round(f["t"] - done_wall, 2),
                **{k: f[k] for k in ("group", "code", "message")},
            }
            for f in self.fleets["go"].failures()
            if f["t"] >= started_wall
        ]
        run["balancer_skew"] = body["status"].get("skew")
        first_drain = next(s for s in samples if s.drained - old_pods)
        run["fleets"] = {
            name: {
                # The restart's own failures apart from the operator's: up to the first drain,
                # and from it on.
                "restart": _summary(delta(first_drain.reports[name], samples[0].reports[name])),
                "balancing": _summary(delta(samples[-1].reports[name], first_drain.reports[name])),
                "proxy": _proxy_delta(self.proxies[name].snapshot(), proxies_before[name]),
            }
            for name in self.fleets
        }
        self.runs[steering] = run
        return run


def _requested(body: dict[str, Any]) -> int:
    return int(body.get("status", {}).get("controller", {}).get("requested_total", 0))


def _summary(report: Report) -> Report:
    """The counters that say how a fleet reconnected and failed, by group."""
    keep = ("clients", "calls_ok", "calls_failed", "failed_by_code", "stream_breaks",
            "stream_errors_by_code", "reconnects", "transient_failures", "dials",
            "dial_errors")  # fmt: skip
    groups = report.get("groups", {})
    return {
        **{k: report[k] for k in keep if k in report},
        "groups": {g: {k: v[k] for k in keep if k in v} for g, v in groups.items()},
    }


def _proxy_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        k: after[k] - before[k] for k in ("accepted", "dials", "refused", "redialled", "gave_up")
    }


def figures(
    samples: list[Sample], *, old_pods: set[str], started: float, done: float, steering: str
) -> dict[str, Any]:
    """A run's figures from its samples: ``needed`` is the load above the mean once the rollout
    finished and every client was back, before the first drain; ``cycled`` what the new pods'
    agents report."""
    after = [s for s in samples if s.at >= done and not (set(s.loads) & old_pods)]
    drains = [s for s in after if s.drained - old_pods]
    assert drains, f"no drain request reached a new pod ({steering})"
    first_drain = drains[0].at
    before_drain = [s for s in after if s.at < first_drain and s.full()]
    assert before_drain, (
        f"no full sample between the rollout's end and the first drain ({steering}); "
        "settleSeconds leaves room for one"
    )
    skewed = before_drain[-1]
    balanced = next(
        (s for s in after if s.at >= first_drain and s.full() and s.skew() <= 1 + TOLERANCE),
        None,
    )
    assert balanced is not None, f"no balanced sample after the first drain ({steering})"
    final = samples[-1]
    cycled = sum(final.cycled.values())
    needed = skewed.excess()
    return {
        "steering": steering,
        "rollout_seconds": round(done - started, 1),
        "time_to_first_drain": round(first_drain - done, 1),
        "time_to_balance": round(balanced.at - done, 1),
        "loads_after_rollout": sorted(skewed.loads.values(), reverse=True),
        "skew_after_rollout": round(skewed.skew(), 3),
        "needed": round(needed, 1),
        "cycled": cycled,
        "cycled_per_needed": round(cycled / needed, 3) if needed else None,
        "final_loads": sorted(final.loads.values(), reverse=True),
        "max_mean": round(final.skew(), 3),
    }


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    binary = os.environ.get("CONNBALANCE_HELM", "")
    if not binary or not Path(binary).is_file():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return subprocess.run(
        [binary, *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def balancer_manifest(namespace: str, *, prometheus: str) -> str:
    """The recipe's ConnectionBalancer, in this namespace, acting, with test-sized timings."""
    body = yaml.safe_load((ROOT / "docs" / "teleport" / "connectionbalancer.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    spec["dryRun"] = False
    spec["metrics"]["prometheus"]["url"] = prometheus
    spec["metrics"]["maxStalenessSeconds"] = 30
    spec["balance"].update(BALANCE)
    spec["actuation"].update({**ACTUATION, "steering": "agent"})
    return yaml.safe_dump(body)


@pytest.fixture(scope="module")
def scenario(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    logs = tmp_path_factory.mktemp("fleets")
    namespace = f"t-rollout-{os.getpid()}"
    cluster.run_kubectl("create", "namespace", namespace)
    cluster.run_kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged"
    )
    release = f"cb-{namespace}"
    started: list[Any] = []
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api)
    try:
        cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
        cluster.run_kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/connectionbalancers.connbalance.io",
        )  # fmt: skip
        installed = helm(
            cluster, "install", release, str(ROOT / "charts" / "connbalance"),
            "--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}",
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        cluster.run_kubectl("apply", "-f", "-", stdin=auth_manifest(namespace=namespace, **POOL))
        cluster.run_kubectl(
            "rollout", "status", "-n", namespace, f"deployment/{DEPLOYMENT}", "--timeout=180s"
        )
        go_binary = build.ensure_built()
        follower = EndpointFollower(api, namespace=namespace, service=DEPLOYMENT, port_name="auth")
        follower.start()
        started.append(follower)
        proxies = {spec.name: ProxyDial(follower, seed=seed) for seed, spec in enumerate(FLEETS)}
        fleets = {}
        for spec in FLEETS:
            proxy = proxies[spec.name]
            fleets[spec.name] = Fleet(
                spec, target=proxy.start(), go_binary=go_binary, log=logs / f"{spec.name}.log"
            )
            started.append(proxy)
            fleets[spec.name].start()
            started.append(fleets[spec.name])
        sampler = Sampler(core, namespace, fleets)
        sampler.start()
        started.append(sampler)
        eventually(
            lambda: (s := sampler.latest()) is not None and sum(s.loads.values()) == TOTAL,
            what=f"all {TOTAL} clients connected",
            timeout=120,
        )
        cluster.run_kubectl(
            "apply", "-f", "-",
            stdin=balancer_manifest(namespace, prometheus=cluster.prometheus_url),
        )  # fmt: skip
        running = Scenario(
            cluster=cluster, namespace=namespace, core=core,
            custom=client.CustomObjectsApi(api), sampler=sampler, fleets=fleets, proxies=proxies,
        )  # fmt: skip
        eventually(
            lambda: running.balancer().get("status", {}).get("phase") == "Balanced",
            what="the operator judges the fresh pool balanced",
            timeout=180,
        )
        yield running
        write_figures(running)
    finally:
        for part in reversed(started):
            part.stop()
        helm(cluster, "uninstall", release, "--namespace", namespace)
        cluster.run_kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def write_figures(scenario: Scenario) -> None:
    path = os.environ.get(FIGURES_ENV)
    if not path or not scenario.runs:
        return
    document = {
        "command": (
            f"{FIGURES_ENV}={path} CONNBALANCE_CLUSTER=~/.cache/connbalance/cluster-run "
            ".venv/bin/python -m pytest tests/e2e/test_teleport_rollout.py"
        ),
        "machine": {
            "system": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "clients": {s.name: {"count": s.count, "failfast": s.failfast} for s in FLEETS},
        "pool": POOL,
        "balance": BALANCE,
        "actuation": ACTUATION,
        "runs": scenario.runs,
    }
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def retry_failures(run: dict[str, Any], *, phase: str = "balancing") -> dict[str, int]:
    return {
        name: fleet[phase]["groups"]["retry"]["calls_failed"]
        for name, fleet in run["fleets"].items()
    }


def test_with_kernel_steering_a_rollout_is_rebalanced_cycling_about_the_excess(scenario):
    run = scenario.rollout(steering="agent")
    assert run["skew_after_rollout"] > 1 + TOLERANCE, run  # the restart did skew the pool
    assert run["max_mean"] <= 1 + TOLERANCE, run
    assert run["cycled_per_needed"] <= 1.1, run
    # Not one call of the retry groups failed while the operator cycled connections (the
    # restart's own failures, before the first drain, are recorded beside them).
    assert retry_failures(run) == {"grpcio": 0, "go": 0}, run
    # The kernel refused the reconnects that aimed at the shedding pods, and the proxy placed
    # them elsewhere: some refused dials, and no client left without a pod.
    assert sum(f["proxy"]["refused"] for f in run["fleets"].values()) > 0, run
    assert all(f["proxy"]["gave_up"] == 0 for f in run["fleets"].values()), run


def test_without_steering_the_same_rollout_costs_more_cycles_for_the_same_balance(scenario):
    assert "agent" in scenario.runs, "the steered run must come first: it is the comparison"
    scenario.kubectl(
        "patch", "connectionbalancer", BALANCER, "--type", "merge",
        "-p", json.dumps({"spec": {"actuation": {"steering": "none"}}}),
    )  # fmt: skip
    run = scenario.rollout(steering="none")
    assert run["skew_after_rollout"] > 1 + TOLERANCE, run
    assert run["max_mean"] <= 1 + TOLERANCE, run
    # Failed calls are recorded, not asserted: three times the resets are three times the
    # chances of one landing while a call's answer is under way, which no retry policy retries.
    # Reconnects spread over every pod, the shedding ones too: more closes for the same balance.
    assert run["cycled_per_needed"] > scenario.runs["agent"]["cycled_per_needed"], scenario.runs
