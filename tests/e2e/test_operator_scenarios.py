"""The operator's end-to-end scenarios on the test cluster (issue 9, item 8).

One chart install and one pool serve them all. The chart runs two replicas that elect a leader
through a Lease, with the chart's ServiceAccount and RBAC, watching only this module's namespace.
The pool is a Deployment of three simulated auth servers, the agent beside each in proxy mode, a
Service in front, the cluster's Prometheus scraping them; outside the cluster a flow-hash
balancer whose backends are the Service's ready endpoints, read from its live EndpointSlices;
300 grpcio clients with long-lived streams go through it, 60 of them without a retry policy.

Each scenario makes a ConnectionBalancer of its own and skews the pool with ``kubectl rollout
restart``. What happened is read from the agents themselves (their ``/status``, sampled a few
times a second: each pod's connections, each request and what it cycled), never from the
operator's word alone.

With ``CONNBALANCE_E2E_FIGURES=PATH`` the rollout scenario writes its figures there as JSON;
``make e2e-figures`` runs it so and renders docs/e2e.md from them (tests/e2e/figures.py).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.cluster.cluster import Cluster
from tests.e2e.pool import HTTP_PORT, OutsideBalancer, agent_status, pool_manifest
from tests.e2e.scenario_kit import (
    DRAIN_ANNOTATION,
    LEASE,
    PAUSE_ANNOTATION,
    AgentWatch,
    ClientFleet,
    Endpoints,
    Machine,
    Request,
    Sample,
    above_mean,
    apply_crd,
    balancer,
    balancer_manifest,
    chart_installed,
    condition,
    cooldown,
    events,
    following,
    kubectl,
    leaders,
    lease_holder,
    metric,
    metrics_text,
    operator_pods,
    pod_process,
    quick_spec,
    skew,
    status_of,
    stays,
)
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

CLIENTS = 300
FAILFAST = 60
PODS = 3
BACK = 0.95  # share of the clients that must hold a connection for a load to count as settled
BALANCED = 1.10  # max/mean the operator must bring the pool to
# The chart's leader election: leaseDuration 15 s, retryPeriod 2 s (connbalance.kube.leader).
TAKEOVER_SECONDS = 15 + 2


# -- the module's cluster objects ---------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", name)
    yield name
    cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(cluster: Cluster, namespace: str) -> Iterator[str]:
    apply_crd(cluster)
    with chart_installed(cluster, namespace, replicas=2) as name:
        yield name


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@dataclass(frozen=True, slots=True)
class Rollout:
    started: float
    finished: float
    pods: tuple[str, ...]  # the new pods, in the order they became ready endpoints

    @property
    def last(self) -> str:
        return self.pods[-1]


@dataclass(slots=True)
class Pool:
    cluster: Cluster
    namespace: str
    release: str
    core: client.CoreV1Api
    outside: OutsideBalancer
    endpoints: Endpoints
    agents: AgentWatch
    fleet: ClientFleet

    def rollout(self) -> Rollout:
        """``kubectl rollout restart``, to the end, and the clients back on the new pods."""
        before = set(self.endpoints.ready())
        started = time.time()
        kubectl(self.cluster, "rollout", "restart", "deployment/auth", "-n", self.namespace)
        eventually(
            lambda: "successfully rolled out" in kubectl(
                self.cluster, "rollout", "status", "deployment/auth", "-n", self.namespace,
                "--watch=false",
            ),
            what="the rollout finished", timeout=180, every=0.5,
        )  # fmt: skip
        finished = time.time()
        new = eventually(
            lambda: (r := self.endpoints.ready()) and len(r) == PODS and not set(r) & before and r,
            what="the Service's ready endpoints are the three new pods",
        )
        eventually(
            lambda: sum(self.agents.loads().values()) >= BACK * CLIENTS,
            what="the clients back on the new pods", timeout=60,
        )  # fmt: skip
        order = sorted(new, key=lambda pod: self.endpoints.first_ready[pod])
        return Rollout(started=started, finished=finished, pods=tuple(order))

    def settled(self, sample: Sample, pods: tuple[str, ...] | None = None) -> bool:
        loads = sample.loads
        return (len(loads) == PODS and (pods is None or set(loads) == set(pods))
                and sum(loads.values()) >= BACK * CLIENTS)  # fmt: skip

    def drain_annotations(self) -> dict[str, str]:
        listed = self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=auth"
        )
        return {p.metadata.name: (p.metadata.annotations or {}).get(DRAIN_ANNOTATION, "")
                for p in listed.items if p.metadata.deletion_timestamp is None}  # fmt: skip


@pytest.fixture(scope="module")
def pool(
    cluster: Cluster, namespace: str, release: str, api: client.ApiClient, core: client.CoreV1Api
) -> Iterator[Pool]:
    kubectl(cluster, "apply", "-f", "-", stdin=pool_manifest(namespace))
    kubectl(cluster, "rollout", "status", "deployment/auth", "-n", namespace, "--timeout=55s")
    # Redials as Teleport's proxy dials the auth Service again: a pod going away while a client
    # dials costs a second pick, not a reset.
    outside = OutsideBalancer(redials=5)
    target = outside.start()
    endpoints = following(outside, api, namespace)
    endpoints.start()
    agents = AgentWatch(endpoints)
    fleet = None
    try:
        eventually(lambda: len(endpoints.ready()) == PODS, what="three ready endpoints")
        agents.start()
        fleet = ClientFleet(target, count=CLIENTS, failfast=FAILFAST)
        eventually(
            lambda: sum(agents.loads().values()) == CLIENTS,
            what=f"all {CLIENTS} clients connected", timeout=120,
        )  # fmt: skip
        yield Pool(cluster=cluster, namespace=namespace, release=release, core=core,
                   outside=outside, endpoints=endpoints, agents=agents, fleet=fleet)  # fmt: skip
    finally:
        if fleet is not None:
            fleet.stop()
        agents.stop()
        endpoints.stop()
        outside.stop()


class Balancers:
    """The ConnectionBalancers a test made, deleted after it (waiting until they are gone)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.names: list[str] = []

    def apply(self, name: str, spec: dict[str, Any], **annotations: str) -> None:
        manifest = balancer_manifest(self.namespace, name, annotations=annotations, **spec)
        kubectl(self.cluster, "apply", "-f", "-", stdin=manifest)
        self.names.append(name)

    def status(self, name: str) -> dict[str, Any]:
        return status_of(self.cluster, self.namespace, name)

    def delete_all(self) -> None:
        for name in self.names:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a slow API server: go on
                self.cluster.run_kubectl(
                    "delete", "connectionbalancer", name, "-n", self.namespace,
                    "--ignore-not-found", "--timeout=30s", check=False,
                )  # fmt: skip


@pytest.fixture
def balancers(cluster: Cluster, namespace: str, pool: Pool) -> Iterator[Balancers]:
    made = Balancers(cluster, namespace)
    yield made
    made.delete_all()


# -- what the scenarios look for ----------------------------------------------------------------


def balanced_now(pool: Pool, balancers: Balancers, name: str) -> Sample | None:
    """The latest sample, once the agents count a balanced pool and the operator agrees."""
    samples = pool.agents.samples_between(time.time() - 1.0)
    if not samples or not pool.settled(samples[-1]) or skew(samples[-1].loads) > BALANCED:
        return None
    return samples[-1] if balancers.status(name).get("phase") == "Balanced" else None


def balanced_since(pool: Pool, start: float, end: float) -> float:
    """When the pool last became balanced, counted by the agents, and stayed so until ``end``."""
    since = end
    for sample in reversed(pool.agents.samples_between(start, end)):
        if not pool.settled(sample) or skew(sample.loads) > BALANCED:
            break
        since = sample.at
    return since


def finished(pool: Pool, requests: list[Request]) -> list[Request]:
    """The requests again, once every agent says each is over."""
    ids = {r.id for r in requests}
    return eventually(
        lambda: (
            (now := [r for r in pool.agents.requests() if r.id in ids])
            and all(r.state in ("done", "rejected") for r in now)
            and now
        ),
        what="every drain request over", timeout=30,
    )  # fmt: skip


def spans(
    fleet: ClientFleet, start: float, split: float, end: float
) -> dict[str, dict[str, dict[str, int]]]:
    """Calls from ``start`` to ``start + split`` (the rollout) and on to ``start + end``."""
    return {"rollout": fleet.calls_between(start, start + split),
            "rebalancing": fleet.calls_between(start + split, start + end)}  # fmt: skip


def steps(requests: list[Request]) -> dict[tuple[str, int], list[Request]]:
    grouped: dict[tuple[str, int], list[Request]] = defaultdict(list)
    for request in requests:
        grouped[request.step].append(request)
    return dict(grouped)



# -- 1. rollout ---------------------------------------------------------------------------------


def test_after_a_rolling_restart_the_operator_balances_the_pool_and_no_retried_call_fails(
    cluster: Cluster, pool: Pool, balancers: Balancers
) -> None:
    machine = Machine()
    spec = quick_spec(cluster.prometheus_url)
    balancers.apply("rollout", spec)
    eventually(lambda: balancers.status("rollout").get("phase") == "Balanced",
               what="the operator judges the fresh pool balanced", timeout=120)  # fmt: skip

    run = pool.rollout()
    first = eventually(lambda: pool.agents.requests(since=run.started)[:1],
                       what="a drain after the rollout", timeout=60)[0]  # fmt: skip
    settled = [s for s in pool.agents.samples_between(run.finished, first.first_seen)
               if pool.settled(s, run.pods)]  # fmt: skip
    assert settled, "the clients were back on the new pods before the first drain"
    skewed = settled[-1].loads
    mean = sum(skewed.values()) / PODS
    assert skewed[run.last] < mean / 2, f"the last pod restarted ({run.last}) comes back light"

    done = eventually(lambda: balanced_now(pool, balancers, "rollout"),
                      what="the pool balanced again", timeout=150)  # fmt: skip
    balanced_at = balanced_since(pool, first.first_seen, done.at)
    # Calls failed while the pods restarted are the rollout's; from the first drain to balanced
    # (and 2 s more, for the last closes) they are the operator's.
    split, end = first.first_seen - run.started, done.at + 2.0 - run.started
    time.sleep(3.0)  # the clients' reports for that span
    calls = spans(pool.fleet, run.started, split, end)
    requests = finished(pool, [r for r in pool.agents.requests(since=run.started)
                               if r.first_seen <= done.at])  # fmt: skip
    final = balancers.status("rollout")

    # The same rollout with the operator doing nothing (the balancer paused), the same span.
    kubectl(cluster, "patch", "connectionbalancer", "rollout", "-n", pool.namespace,
            "--type", "merge", "-p", '{"spec": {"paused": true}}')  # fmt: skip
    eventually(lambda: balancers.status("rollout").get("phase") == "Paused",
               what="the balancer paused")  # fmt: skip
    stopped_run = pool.rollout()
    time.sleep(max(0.0, stopped_run.started + end + 1.5 - time.time()))
    stopped_calls = spans(pool.fleet, stopped_run.started, split, end)
    assert not pool.agents.requests(since=stopped_run.started), "paused: nothing drained"

    figures = {
        "scenario": "tests/e2e/test_operator_scenarios.py::"
        "test_after_a_rolling_restart_the_operator_balances_the_pool_and_no_retried_call_fails",
        "command": "make e2e-figures",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.to_json(),
        "clients": {"total": CLIENTS, "failfast": FAILFAST, "retry": CLIENTS - FAILFAST},
        "spec": spec,
        "rollout_seconds": round(run.finished - run.started, 1),
        "loads_after_rollout": {pod: skewed[pod] for pod in run.pods},
        "skew_after_rollout": round(skew(skewed), 3),
        "first_drain_seconds": round(first.first_seen - run.finished, 1),
        "balanced_seconds": round(balanced_at - run.finished, 1),
        "steps": len(steps(requests)),
        "cycled": sum(r.cycled for r in requests),
        "needed": above_mean(skewed),
        "loads_balanced": done.loads,
        "skew_balanced": round(skew(done.loads), 3),
        "operator_skew": final.get("skew"),
        "spans_seconds": {"rollout": round(split, 1), "rebalancing": round(end - split, 1)},
        "calls": {"operator": calls, "operator_stopped": stopped_calls},
    }
    target = os.environ.get("CONNBALANCE_E2E_FIGURES")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))

    assert skew(done.loads) <= BALANCED
    assert final["skew"] <= BALANCED
    # A call that outlives its 2 s deadline on a starved machine is no connection's fault: the
    # same span of the stopped run counts those too (docs/e2e.md). Every other failure is.
    retried = calls["rebalancing"]["retry"]
    failed = retried["calls_failed"] - retried.get("code:DeadlineExceeded", 0)
    assert failed == 0, f"retry-policy calls failed while the operator rebalanced: {calls}"
    assert retried["calls_ok"] > 0
    assert calls["rebalancing"]["failfast"]["calls_ok"] > 0
    assert figures["cycled"] > 0


# -- 2. dry run ---------------------------------------------------------------------------------


def test_in_dry_run_status_and_events_say_what_would_be_asked_and_no_agent_acts(
    cluster: Cluster, pool: Pool, balancers: Balancers
) -> None:
    spec = quick_spec(cluster.prometheus_url, dryRun=True)
    balancers.apply("dryrun", spec)
    run = pool.rollout()
    said = eventually(
        lambda: (
            (action := balancers.status("dryrun").get("lastAction") or "")
            .startswith("dry run: would cycle")
            and any(f"{pod}=" in action for pod in run.pods)
            and action
        ),
        what="status says what a step would cycle on the new pods", timeout=60,
    )  # fmt: skip
    would = {part.split("=")[0]: int(part.split("=")[1])
             for part in said.removeprefix("dry run: would cycle ").split(", ")}  # fmt: skip
    asked = [pod for pod, count in would.items() if count > 0]
    assert asked, said
    assert set(asked) <= set(run.pods), said

    def told(kind: str, name: str | None, text: str) -> list[Any]:
        return [e for e in events(cluster, pool.namespace, kind=kind, name=name)
                if e["reason"] == "DrainRequested" and text in e["message"]]  # fmt: skip

    for pod in asked:
        eventually(
            lambda pod=pod: told("ConnectionBalancer", "dryrun",
                                 f"dry run: would ask {pod} to cycle {would[pod]} connections"),
            what=f"an Event on the balancer says {pod} would be asked",
        )  # fmt: skip
        eventually(lambda pod=pod: told("Pod", pod, "would be asked (dry run)"),
                   what=f"an Event on {pod} says it would be asked")  # fmt: skip

    time.sleep(cooldown(spec))  # time enough for a step that should not happen
    assert pool.agents.requests(since=run.started) == []
    for pod, ip in pool.endpoints.ready().items():
        answer = agent_status(ip)
        assert (answer["cycled_total"], answer["requests"]) == (0, []), pod
        counted = metric(metrics_text(ip, HTTP_PORT), "connbalance_agent_requests_total")
        assert counted, f"{pod}'s agent exports its request counter"
        assert sum(counted) == 0, f"{pod}'s agent counted no request"
    assert not any(pool.drain_annotations().values()), "no drain request written on a pod"
    assert skew(pool.agents.loads()) > 1.25, "nothing moved: the pool stays skewed"


# -- 3. pause -----------------------------------------------------------------------------------


def test_a_pause_by_spec_or_annotation_drains_nothing_and_names_itself_then_lifted_it_balances(
    cluster: Cluster, pool: Pool, balancers: Balancers
) -> None:
    spec = quick_spec(cluster.prometheus_url, paused=True)
    quiet = spec["balance"]["settleSeconds"] + cooldown(spec) + 2
    balancers.apply("pause", spec)

    def paused_by(reason: str) -> bool:
        status = balancers.status("pause")
        return (status.get("phase") == "Paused"
                and condition(status, "Paused").get("status") == "True"
                and condition(status, "Paused").get("reason") == reason)  # fmt: skip

    def nothing_drained() -> bool:
        return not pool.agents.requests(since=run.started) and not any(
            pool.drain_annotations().values()
        )

    eventually(lambda: paused_by("SpecPaused"), what="Paused by spec.paused")
    run = pool.rollout()
    stays(lambda: nothing_drained() and paused_by("SpecPaused"), seconds=quiet,
          what="nothing drained while spec.paused")  # fmt: skip
    status = balancers.status("pause")
    assert "spec.paused" in status["reason"]
    assert "spec.paused" in condition(status, "Paused")["message"]
    assert skew(pool.agents.loads()) > 1.25

    patch = {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}, "spec": {"paused": False}}
    kubectl(cluster, "patch", "connectionbalancer", "pause", "-n", pool.namespace,
            "--type", "merge", "-p", json.dumps(patch))  # fmt: skip
    eventually(lambda: paused_by("AnnotationPaused"), what=f"Paused by {PAUSE_ANNOTATION}")
    stays(lambda: nothing_drained() and paused_by("AnnotationPaused"), seconds=cooldown(spec) + 2,
          what="nothing drained while paused by the annotation")  # fmt: skip
    status = balancers.status("pause")
    assert PAUSE_ANNOTATION in status["reason"]
    assert PAUSE_ANNOTATION in condition(status, "Paused")["message"]

    lifted = time.time()
    kubectl(cluster, "annotate", "connectionbalancer", "pause", "-n", pool.namespace,
            f"{PAUSE_ANNOTATION}-")  # fmt: skip
    eventually(lambda: balanced_now(pool, balancers, "pause"),
               what="the pool balanced once the pause is lifted", timeout=150)  # fmt: skip
    drained = pool.agents.requests(since=run.started)
    assert drained
    assert all(r.first_seen >= lifted for r in drained)
    assert condition(balancers.status("pause"), "Paused")["status"] == "False"


# -- 4. leader killed mid-drain -----------------------------------------------------------------


def test_a_leader_killed_mid_drain_hands_over_to_the_standby_which_acts_on_no_id_twice(
    cluster: Cluster, pool: Pool, balancers: Balancers, core: client.CoreV1Api
) -> None:
    namespace, release = pool.namespace, pool.release
    assert len(operator_pods(core, namespace, release)) == 2
    (leader,) = eventually(
        lambda: (found := leaders(operator_pods(core, namespace, release))) and len(found) == 1
        and found, what="exactly one operator replica leads",
    )  # fmt: skip
    holder = eventually(lambda: lease_holder(cluster, namespace), what="a Lease holder")
    spec = quick_spec(cluster.prometheus_url,
                      balance={"maxFractionPerStep": 0.25, "maxPoolFractionPerStep": 0.25},
                      actuation={"windowSeconds": 4})  # fmt: skip
    balancers.apply("leader", spec)
    run = pool.rollout()
    eventually(lambda: [r for r in pool.agents.requests(since=run.started) if r.state == "running"],
               what="a drain in progress", timeout=60, every=0.1)  # fmt: skip

    os.kill(pod_process(namespace, leader, argv_has="run"), signal.SIGKILL)
    killed = time.time()
    new_holder = eventually(
        lambda: (now := lease_holder(cluster, namespace)) and now != holder and now,
        what="another holder of the Lease", timeout=TAKEOVER_SECONDS + 10, every=0.2,
    )  # fmt: skip
    took = time.time() - killed
    assert took <= TAKEOVER_SECONDS + 3, f"the standby took the Lease after {took:.1f}s"
    assert new_holder != holder
    (successor,) = eventually(
        lambda: (found := leaders(operator_pods(core, namespace, release))) and len(found) == 1
        and found, what="exactly one replica leads again",
    )  # fmt: skip
    assert successor != leader, "the standby, not the killed one restarted, took over"
    eventually(
        lambda: [e for e in events(cluster, namespace, kind="Lease", name=LEASE)
                 if e["reason"] == "LeaderElected" and new_holder in e["message"]],
        what="a LeaderElected Event on the Lease naming the new holder",
    )  # fmt: skip

    done = eventually(lambda: balanced_now(pool, balancers, "leader"),
                      what="the pool balanced by the new leader", timeout=150)  # fmt: skip
    requests = finished(pool, [r for r in pool.agents.requests(since=run.started)
                               if r.first_seen <= done.at])  # fmt: skip
    assert any(r.first_seen > killed for r in requests), "the new leader went on with the episode"

    for request in requests:
        assert pool.agents.pods_listing(request.id) == {request.pod}, request
        assert request.id.endswith(f".{request.pod}")
        assert request.cycled <= request.count
    for pod, ip in pool.endpoints.ready().items():
        duplicates = metric(metrics_text(ip, HTTP_PORT), "connbalance_agent_requests_total",
                            result="duplicate")  # fmt: skip
        assert duplicates == [0.0], f"{pod}'s agent was offered a request id again"
    assert_within_caps(requests, spec)
    assert leaders(operator_pods(core, namespace, release)) == [successor]


def assert_within_caps(requests: list[Request], spec: dict[str, Any]) -> None:
    """No request over maxConnectionsPerStep or maxFractionPerStep of its pod's load, no step over
    maxPoolFractionPerStep of the pool's, and no step, nor any pod's next request, sooner than
    the cooldown after the one before (a second drain)."""
    balance, gap = spec["balance"], cooldown(spec) - 1.0  # the agents are sampled, not watched
    for request in requests:
        assert request.count <= balance.get("maxConnectionsPerStep", 1000), request
        assert request.count <= math.floor(balance["maxFractionPerStep"] * request.pod_peak) + 1, (
            request
        )
    grouped = steps(requests)
    for step, issued in grouped.items():
        pool_peak = max(r.pool_peak for r in issued)
        total = sum(r.count for r in issued)
        budget = math.floor(balance["maxPoolFractionPerStep"] * pool_peak) + 1
        assert total <= budget, (step, issued)
    starts = sorted(min(r.first_seen for r in issued) for issued in grouped.values())
    assert all(b - a >= gap for a, b in itertools.pairwise(starts)), starts
    by_pod: dict[str, list[float]] = defaultdict(list)
    for request in requests:
        by_pod[request.pod].append(request.first_seen)
    for pod, seen in by_pod.items():
        seen.sort()
        assert all(b - a >= gap for a, b in itertools.pairwise(seen)), (pod, seen)


# -- 5. no convergence --------------------------------------------------------------------------


def test_against_a_sticky_balancer_converging_goes_false_after_a_few_steps_and_drains_stop(
    cluster: Cluster, pool: Pool, balancers: Balancers
) -> None:
    without_improvement = 2
    spec = quick_spec(cluster.prometheus_url,
                      balance={"maxStepsWithoutImprovement": without_improvement, "maxSteps": 10})
    pool.outside.stick(True)
    try:
        balancers.apply("sticky", spec)
        run = pool.rollout()
        status = eventually(
            lambda: (s := balancers.status("sticky"))
            and condition(s, "Converging").get("status") == "False" and s,
            what="Converging=False", timeout=120,
        )  # fmt: skip
        gave_up = time.time()
        assert condition(status, "Converging")["reason"] == "NotConverging"
        issued = steps(pool.agents.requests(since=run.started))
        assert 1 <= len(issued) <= without_improvement + 1, sorted(issued)
        stays(lambda: not pool.agents.requests(since=gave_up), seconds=2 * cooldown(spec) + 3,
              what="no drain after Converging=False")  # fmt: skip
        reasons = {e["reason"] for e in events(cluster, pool.namespace,
                                               kind="ConnectionBalancer", name="sticky")}
        assert "NotConverging" in reasons
        assert skew(pool.agents.loads()) > 1.25, "the sticky balancer kept the pool skewed"
    finally:
        pool.outside.stick(False)


# -- 6. deletion --------------------------------------------------------------------------------


def test_deleting_a_balancer_mid_episode_stops_its_loop_and_leaves_nothing_stuck(
    cluster: Cluster, pool: Pool, balancers: Balancers, core: client.CoreV1Api
) -> None:
    namespace = pool.namespace
    spec = quick_spec(cluster.prometheus_url,
                      balance={"maxFractionPerStep": 0.25, "maxPoolFractionPerStep": 0.25})
    balancers.apply("deleted", spec)
    run = pool.rollout()
    eventually(lambda: pool.agents.requests(since=run.started), what="a first step", timeout=60)
    (leader,) = [p for p in operator_pods(core, namespace, pool.release)
                 if p.name in leaders(operator_pods(core, namespace, pool.release))]  # fmt: skip

    def series() -> list[float]:
        text = metrics_text(leader.ip)
        return [*metric(text, "connbalance_phase", namespace=namespace, balancer="deleted"),
                *metric(text, "connbalance_skew", namespace=namespace, balancer="deleted")]

    eventually(series, what="the balancer's loop in the leader's metrics")
    assert not balancer(cluster, namespace, "deleted")["metadata"].get("finalizers")
    annotations = pool.drain_annotations()
    told = len(events(cluster, namespace, kind="ConnectionBalancer", name="deleted"))

    asked = time.time()
    kubectl(cluster, "delete", "connectionbalancer", "deleted", "-n", namespace, "--timeout=20s")
    deleted = time.time()
    assert deleted - asked < 20
    gone = cluster.run_kubectl("get", "connectionbalancer", "deleted", "-n", namespace,
                               check=False)  # fmt: skip
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr

    eventually(lambda: not series(), what="the loop's series gone from the metrics", timeout=15)
    stays(lambda: not pool.agents.requests(since=deleted), seconds=2 * cooldown(spec) + 3,
          what="no drain after the deletion")  # fmt: skip
    assert pool.drain_annotations() == annotations, "no annotation written after the deletion"
    assert len(events(cluster, namespace, kind="ConnectionBalancer", name="deleted")) == told
    assert skew(pool.agents.loads()) > BALANCED, "left mid-episode: a live loop would go on"
