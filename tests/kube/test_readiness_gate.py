"""Steering by readiness gate on the test cluster: the operator's gate writer against the real API
server, the kubelet's readiness and the real EndpointSlice controller.

The gate writer runs on a fake clock, so when a window ends is exact; what it writes and what
Kubernetes makes of it (the pod's Ready, its endpoint in the Service's EndpointSlice) are real.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from connbalance.controller import Controller, ControllerState
from connbalance.kube.actuator import AnnotationActuator
from connbalance.kube.fleet import KubeFleet
from connbalance.kube.gates import GatedActuator, PodConditionGate
from connbalance.kube.podchanges import PodChanges
from connbalance.model import DRAIN_ANNOTATION, PodName, PodState, Policy, PolicyName
from connbalance.model.settings import ACCEPTING_CONDITION
from connbalance.ports.gates import GateMissing
from tests.agent.fakeclock import FakeClock
from tests.cluster.cluster import Cluster
from tests.kube.counting import CountingCore
from tests.unit.fakes import DictLoads, ListEvents
from tests.unit.fakes import FakeClock as EpochClock
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SELECTOR = (("app", "auth"),)
WINDOW = 30.0
POOL = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: auth, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: auth}}}}
  template:
    metadata: {{labels: {{app: auth}}}}
    spec:
      terminationGracePeriodSeconds: 1
      {gates}
      containers:
      - name: server
        image: connbalance/podserver
        command: [python, tests/cluster/podserver.py]
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: auth, namespace: {ns}}}
spec:
  selector: {{app: auth}}
  ports: [{{name: http, port: 8080}}]
"""
GATES = f"readinessGates: [{{conditionType: {ACCEPTING_CONDITION}}}]"


@pytest.fixture
def core(cluster: Cluster) -> Any:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


@pytest.fixture
def discovery(cluster: Cluster) -> Any:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.DiscoveryV1Api(api)


def clock_at_a_whole_second() -> FakeClock:
    """The API server keeps condition times to the second: start on one, and windows are exact."""
    return FakeClock(start=datetime.now(UTC).replace(microsecond=0))


def gate_for(core: Any, namespace: str, clock: FakeClock) -> PodConditionGate:
    return PodConditionGate(core=core, namespace=namespace, selector=SELECTOR,
                            window_seconds=WINDOW, clock=clock)


def deploy(cluster: Cluster, namespace: str, *, gated: bool = True) -> None:
    manifest = POOL.format(ns=namespace, gates=GATES if gated else "")
    cluster.run_kubectl("apply", "-f", "-", stdin=manifest)


def pods(core: Any, namespace: str, *, count: int = 2) -> list[Any]:
    """The pool's pods once ``count`` of them run with an IP, sorted by name."""

    def running() -> list[Any] | None:
        listed = core.list_namespaced_pod(namespace, label_selector="app=auth").items
        up = [p for p in listed if p.status.phase == "Running" and p.status.pod_ip]
        return sorted(up, key=lambda p: p.metadata.name) if len(up) == count else None

    found: list[Any] = eventually(running, what=f"{count} pods running")
    return found


def state(pod: Any) -> PodState:
    return PodState(name=PodName(pod.metadata.name), ready=True, uid=pod.metadata.uid,
                    ip=pod.status.pod_ip)


def condition(core: Any, namespace: str, name: str, kind: str) -> Any | None:
    pod = core.read_namespaced_pod(name, namespace)
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def endpoints_ready(discovery: Any, namespace: str) -> dict[str, bool]:
    """Each pod's endpoint in the Service's EndpointSlices, and whether it is marked ready."""
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=auth").items
    return {
        e.target_ref.name: bool(e.conditions.ready)
        for s in slices for e in s.endpoints or [] if e.target_ref is not None
    }


def wait_for_endpoints(discovery: Any, namespace: str, want: dict[str, bool]) -> None:
    eventually(lambda: endpoints_ready(discovery, namespace) == want,
               what=f"EndpointSlice endpoints {want}")


def test_the_endpoint_slice_drops_a_shedding_pod_for_its_window_and_takes_it_back(
    cluster: Cluster, namespace: str, core: Any, discovery: Any
) -> None:
    deploy(cluster, namespace)
    a, b = pods(core, namespace)
    names = (a.metadata.name, b.metadata.name)
    # The kubelet keeps a pod with the gate not Ready until the condition says it accepts.
    wait_for_endpoints(discovery, namespace, dict.fromkeys(names, False))
    clock = clock_at_a_whole_second()
    gate = gate_for(core, namespace, clock)
    assert asyncio.run(gate.reopen_due()) is None
    wait_for_endpoints(discovery, namespace, dict.fromkeys(names, True))

    asyncio.run(gate.close(pod=state(a)))
    wait_for_endpoints(discovery, namespace, {names[0]: False, names[1]: True})
    written = condition(core, namespace, names[0], ACCEPTING_CONDITION)
    assert (written.status, written.reason) == ("False", "Shedding")
    # The kubelet's own conditions were kept beside it, and it says why the pod is not Ready.
    assert condition(core, namespace, names[0], "ContainersReady").status == "True"
    assert condition(core, namespace, names[0], "Ready").status == "False"

    asyncio.run(clock.advance(WINDOW - 1))
    assert asyncio.run(gate.reopen_due()) == pytest.approx(1.0)
    assert endpoints_ready(discovery, namespace)[names[0]] is False
    asyncio.run(clock.advance(1))
    assert asyncio.run(gate.reopen_due()) is None
    wait_for_endpoints(discovery, namespace, dict.fromkeys(names, True))
    restored = condition(core, namespace, names[0], ACCEPTING_CONDITION)
    assert (restored.status, restored.reason) == ("True", "WindowEnded")


def stale(core: Any, namespace: str, name: str, *, since: datetime) -> None:
    """The condition as an operator that stopped mid-window left it: False since ``since``."""
    body = {"status": {"conditions": [{
        "type": ACCEPTING_CONDITION, "status": "False", "reason": "Shedding",
        "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}}
    core.patch_namespaced_pod_status(name, namespace, body,
                                     _content_type="application/strategic-merge-patch+json")


def test_a_restarted_gate_restores_what_was_left_false_past_its_window_and_no_other(
    cluster: Cluster, namespace: str, core: Any
) -> None:
    deploy(cluster, namespace)
    a, b = (p.metadata.name for p in pods(core, namespace))
    clock = clock_at_a_whole_second()
    stale(core, namespace, a, since=clock.now() - timedelta(seconds=WINDOW + 5))
    stale(core, namespace, b, since=clock.now() - timedelta(seconds=WINDOW - 12))
    restarted = gate_for(core, namespace, clock)  # a fresh writer knows nothing in memory
    assert asyncio.run(restarted.reopen_due()) == pytest.approx(12.0)
    assert condition(core, namespace, a, ACCEPTING_CONDITION).status == "True"
    assert condition(core, namespace, b, ACCEPTING_CONDITION).status == "False"
    asyncio.run(clock.advance(12))
    assert asyncio.run(restarted.reopen_due()) is None
    assert condition(core, namespace, b, ACCEPTING_CONDITION).status == "True"


def test_a_pod_without_the_readiness_gate_is_named_in_a_warning_and_nothing_is_written(
    cluster: Cluster, namespace: str, core: Any
) -> None:
    deploy(cluster, namespace, gated=False)
    pool = pods(core, namespace)
    pod = pool[0]
    eventually(lambda: all(condition(core, namespace, p.metadata.name, "Ready").status == "True"
                           for p in pool), what="both pods Ready")
    gate = gate_for(core, namespace, clock_at_a_whole_second())
    with pytest.raises(GateMissing) as caught:
        asyncio.run(gate.close(pod=state(pod)))
    assert f"no readiness gate {ACCEPTING_CONDITION}" in str(caught.value)
    assert condition(core, namespace, pod.metadata.name, ACCEPTING_CONDITION) is None
    # Through the actuator: the Warning names the pod and the gate; the request still goes out.
    events = ListEvents()
    actuator = GatedActuator(actuator=AnnotationActuator(core=core, namespace=namespace),
                             gate=gate, events=events)
    policy = Policy.from_spec({"selector": {"matchLabels": dict(SELECTOR)},
                               "actuation": {"steering": "readinessGate"}})
    controller = controller_for(core, namespace, policy, actuator, [pod])
    asyncio.run(controller.tick(ControllerState()))
    [(kind, _, message)] = [e for e in events.events if e[1] == "ReadinessGateMissing"]
    assert kind == "Warning"
    assert pod.metadata.name in message
    assert f"readinessGates: [{{conditionType: {ACCEPTING_CONDITION}}}]" in message
    annotations = core.read_namespaced_pod(pod.metadata.name, namespace).metadata.annotations
    assert DRAIN_ANNOTATION in (annotations or {})
    assert condition(core, namespace, pod.metadata.name, ACCEPTING_CONDITION) is None


def controller_for(core: Any, namespace: str, policy: Policy, actuator: Any,
                   loaded: list[Any]) -> Controller:
    """The real controller on the real pool, with loads that make the first pod shed."""
    apps = client.AppsV1Api(core.api_client)
    clock = EpochClock(now=datetime.now(UTC).timestamp() + 3600)  # every pod long settled
    names = [p.metadata.name for p in core.list_namespaced_pod(
        namespace, label_selector="app=auth").items]
    values = {n: (400.0 if n == loaded[0].metadata.name else 0.0) for n in names}
    return Controller(
        name=PolicyName(f"{namespace}/auth"), policy=policy, loads=DictLoads(clock, values),
        fleet=KubeFleet(core=core, apps=apps, namespace=namespace, selector=SELECTOR,
                        workload=None),
        actuator=actuator, events=ListEvents(), clock=clock,
    )


def test_dry_run_never_takes_a_pod_out_of_its_endpoints(
    cluster: Cluster, namespace: str, core: Any
) -> None:
    deploy(cluster, namespace)
    pool = pods(core, namespace)
    clock = clock_at_a_whole_second()
    gate = gate_for(core, namespace, clock)
    asyncio.run(gate.reopen_due())
    eventually(lambda: all(condition(core, namespace, p.metadata.name, "Ready").status == "True"
                           for p in pool), what="both pods Ready")
    for dry_run in (True, False):
        policy = Policy.from_spec({"selector": {"matchLabels": dict(SELECTOR)},
                                   "dryRun": dry_run,
                                   "actuation": {"steering": "readinessGate"}})
        actuator = GatedActuator(actuator=AnnotationActuator(core=core, namespace=namespace),
                                 gate=gate, events=ListEvents())
        result = asyncio.run(controller_for(core, namespace, policy, actuator, pool)
                             .tick(ControllerState()))
        planned = result.state.last_action or ""
        assert planned.startswith("dry run: would cycle" if dry_run else "step 1: cycle"), planned
        shed = condition(core, namespace, pool[0].metadata.name, ACCEPTING_CONDITION)
        # The same tick, but only the real one writes False: dry run swaps the whole actuator.
        assert shed.status == ("True" if dry_run else "False"), f"dryRun {dry_run}"


@pytest.fixture
def crd(cluster: Cluster) -> None:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/connectionbalancers.connbalance.io")


# Nothing listens there: a balancer that names no Prometheus never takes a step.
NO_PROMETHEUS = "http://127.0.0.1:9"


@pytest.fixture
def start_operator(cluster: Cluster, namespace: str) -> Iterator[Callable[..., None]]:
    """Starts ``connbalance run`` for the namespace when called; killed after the test."""
    started: list[subprocess.Popen[bytes]] = []
    with open(cluster.run_dir / "logs" / f"operator-{namespace}.log", "ab") as log:

        def start(*, prometheus: str = NO_PROMETHEUS) -> None:
            args = [sys.executable, "-m", "connbalance", "run",
                    "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
                    "--liveness", "", "--leader-election", "off",
                    "--default-prometheus-url", prometheus]
            started.append(subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

        yield start
        for process in started:
            process.kill()
            process.wait(timeout=30)


def test_the_operator_restores_a_stale_condition_when_it_starts(
    cluster: Cluster, namespace: str, core: Any, crd: None,
    start_operator: Callable[..., None],
) -> None:
    """What an operator killed mid-window left False is put back by the next one to start,
    before it measures anything (here Prometheus is unreachable, so it never does)."""
    deploy(cluster, namespace)
    a, b = (p.metadata.name for p in pods(core, namespace))
    stale(core, namespace, a, since=datetime.now(UTC) - timedelta(hours=1))
    balancer = {"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                "metadata": {"name": "auth", "namespace": namespace},
                "spec": {"selector": {"matchLabels": dict(SELECTOR)},
                         "actuation": {"steering": "readinessGate"}}}
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(balancer))
    assert condition(core, namespace, a, ACCEPTING_CONDITION).status == "False"
    assert condition(core, namespace, b, ACCEPTING_CONDITION) is None
    start_operator()
    eventually(lambda: condition(core, namespace, a, ACCEPTING_CONDITION).status == "True",
               what="the stale condition restored")
    # b had the gate but no condition: it is opened too, or it would never be Ready.
    eventually(lambda: (c := condition(core, namespace, b, ACCEPTING_CONDITION)) is not None
               and c.status == "True", what="the new pod's condition set")
    eventually(lambda: all(condition(core, namespace, n, "Ready").status == "True"
                           for n in (a, b)), what="both pods Ready")


def constant_loads(loads: dict[str, float]) -> str:
    """PromQL giving each pod a fixed load, evaluated by the real Prometheus: one series per pod."""
    return " or ".join(f'label_replace(vector({v:g}), "pod", "{pod}", "", "")'
                       for pod, v in loads.items())


def test_the_operator_takes_a_shedding_pod_out_of_its_endpoints_for_the_window_only(
    cluster: Cluster, namespace: str, core: Any, discovery: Any, crd: None,
    start_operator: Callable[..., None],
) -> None:
    """``connbalance run`` end to end with steering readinessGate: it opens the gates of a new
    pool, closes the loaded pod's for its drain window (the request asks its agent not to
    steer), and opens it again when the window ends."""
    deploy(cluster, namespace)
    a, b = (p.metadata.name for p in pods(core, namespace))
    window = 10
    balancer = {"apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
                "metadata": {"name": "auth", "namespace": namespace},
                "spec": {"selector": {"matchLabels": dict(SELECTOR)},
                         "metrics": {"preset": "custom",
                                     "query": constant_loads({a: 400, b: 0})},
                         # One step in this test: the next waits for the step interval.
                         "balance": {"settleSeconds": 0, "minConnections": 0,
                                     "stepIntervalSeconds": 600},
                         "actuation": {"steering": "readinessGate", "windowSeconds": window,
                                       "deadlineSeconds": 2 * window}}}
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(balancer))
    start_operator(prometheus=cluster.prometheus_url)

    def shedding() -> Any | None:
        found = condition(core, namespace, a, ACCEPTING_CONDITION)
        return found if found is not None and found.status == "False" else None

    closed = eventually(shedding, what=f"{a} taken out of its endpoints", timeout=120)
    assert closed.reason == "Shedding"
    # The gate closes before the request is written (steer first, then cycle).
    written = eventually(
        lambda: (core.read_namespaced_pod(a, namespace).metadata.annotations or {}).get(
            DRAIN_ANNOTATION),
        what=f"the drain request on {a}", timeout=window)
    request = json.loads(written)
    assert request["count"] > 0
    assert "steer" not in request, "with readinessGate the agent must not refuse connections"
    eventually(lambda: endpoints_ready(discovery, namespace) == {a: False, b: True},
               what=f"only {a}'s endpoint not ready, within its window", timeout=window)
    eventually(lambda: endpoints_ready(discovery, namespace) == {a: True, b: True},
               what="both endpoints ready again after the window", timeout=window + 20)
    reopened = condition(core, namespace, a, ACCEPTING_CONDITION)
    assert (reopened.status, reopened.reason) == ("True", "WindowEnded")
    held = (reopened.last_transition_time - closed.last_transition_time).total_seconds()
    assert held >= window - 1, f"reopened after {held:.0f}s, before its {window}s window ended"


def test_with_pod_changes_the_sweep_lists_the_pool_only_after_a_write_or_at_a_window_end(
    cluster: Cluster, namespace: str, core: Any
) -> None:
    deploy(cluster, namespace)
    a, _ = pods(core, namespace)
    clock = clock_at_a_whole_second()
    counting = CountingCore(core)
    changes = PodChanges(clock=clock.monotonic, resync_seconds=3600)
    gate = PodConditionGate(core=counting, namespace=namespace, selector=SELECTOR,
                            window_seconds=WINDOW, clock=clock, changes=changes)
    assert asyncio.run(gate.reopen_due()) is None  # opens both new pods: two writes
    assert asyncio.run(gate.reopen_due()) is None  # after its writes it lists again
    assert counting.pod_lists == 2
    assert asyncio.run(gate.reopen_due()) is None  # nothing moved since: no list
    assert counting.pod_lists == 2
    asyncio.run(gate.close(pod=state(a)))
    asyncio.run(clock.advance(WINDOW - 1))
    assert asyncio.run(gate.reopen_due()) == pytest.approx(1.0)
    assert asyncio.run(gate.reopen_due()) == pytest.approx(1.0)  # the window is still on
    assert counting.pod_lists == 3
    asyncio.run(clock.advance(1))
    assert asyncio.run(gate.reopen_due()) is None  # its end: listed, and reopened
    assert counting.pod_lists == 4
    restored = condition(core, namespace, a.metadata.name, ACCEPTING_CONDITION)
    assert (restored.status, restored.reason) == ("True", "WindowEnded")
