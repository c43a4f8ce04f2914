"""Faults of the operator and of the agents, on the real control plane, one pool for the module:
the operator SIGKILLed between delivering a step and recording it, two replicas of which only the
Lease holder may act, an agent SIGKILLed mid-request, and an agent the operator cannot reach.

Each test skews the pool (every client on one pod), lets the operator rebalance it, and checks the
ledger the agents keep in their state files: no request id acted on twice, no cap exceeded; and
that a condition or an Event says what happened.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.pool import agent_status
from tests.faults.kit import (
    Operator,
    Pool,
    acted_ids,
    agents_ledger,
    assert_no_pod_asked_again_within_a_cooldown,
    assert_nothing_twice_and_caps_held,
    balancer_manifest,
    condition,
    delivered,
    drain_annotations,
    events,
    kubectl,
    pod_drain_events,
    status,
    wait_balanced,
    wait_for,
)
from tests.kube.faultproxy import FaultProxy, Rule

pytestmark = pytest.mark.cluster
HTTP = {"method": "http", "tokenSecret": {"name": "agent-token", "key": "token"}}


@pytest.fixture(scope="module")
def pool(cluster: Cluster, module_namespace: str) -> Iterator[Pool]:
    running = Pool(cluster, module_namespace)
    running.deploy()
    yield running
    running.close()


@pytest.fixture
def fresh(cluster: Cluster, module_namespace: str, pool: Pool) -> Iterator[set[str]]:
    """The ids acted on before this test; afterwards the balancer and its requests are gone."""
    yield acted_ids(agents_ledger(pool.uids))
    kubectl(cluster, "delete", "connectionbalancer", "auth", "-n", module_namespace,
            "--ignore-not-found", "--timeout=30s")
    kubectl(cluster, "annotate", "pods", "-n", module_namespace, "--all",
            "connbalance.io/drain-", check=False)


@pytest.fixture
def operators(cluster: Cluster) -> Iterator[list[Operator]]:
    started: list[Operator] = []
    yield started
    for operator in started:
        operator.kill()


@pytest.fixture
def proxies(cluster: Cluster) -> Iterator[list[FaultProxy]]:
    started: list[FaultProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def new_ledger(pool: Pool, before: set[str]) -> list:
    return [a for a in agents_ledger(pool.uids) if a.id not in before]


def log_of(cluster: Cluster, name: str) -> Path:
    return cluster.run_dir / "logs" / f"{name}.log"


def test_an_operator_sigkilled_between_delivery_and_status_write_resumes_and_cycles_nothing_twice(
    cluster, module_namespace, pool, fresh, operators, proxies, tmp_path
):
    ns = module_namespace
    proxy = FaultProxy(upstream=cluster.api_server, pki=cluster.run_dir / "pki").start()
    proxies.append(proxy)
    # The status write that records the first step never gets through: the crash comes after
    # the requests are on the pods and before the operator's memory of them is.
    held = proxy.add(Rule(
        "hold", "PATCH",
        rf"/apis/connbalance.io/v1alpha1/namespaces/{ns}/connectionbalancers/auth/status",
        body="Rebalancing"))
    first = Operator(proxy.kubeconfig(tmp_path / "proxy.kubeconfig"), ns,
                     log_of(cluster, f"operator-{ns}-first")).start()
    operators.append(first)
    pool.skew()
    kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(ns, cluster.prometheus_url))
    wait_for("the first step delivered and its status write held", lambda: held.hits == 1)
    on_pods = drain_annotations(pool.pods())
    assert on_pods, "the step's requests are on the pods"
    first.kill()
    assert status(cluster, ns).get("controller", {}).get("step", 0) == 0, "status lost the step"

    second = Operator(proxy.kubeconfig(tmp_path / "proxy.kubeconfig"), ns,
                      log_of(cluster, f"operator-{ns}-second")).start()
    operators.append(second)
    wait_balanced(cluster, ns, pool)

    ledger = new_ledger(pool, fresh)
    assert_nothing_twice_and_caps_held(ledger)
    acted = {a.id for a in ledger}
    assert {r["id"] for r in on_pods.values()} <= acted, "the step before the crash was acted on"
    written = delivered(proxy, ns)
    assert sorted(r["id"] for r in written) == sorted(acted), "each request written once"
    # Window 2 s + step interval 2 s: the restarted operator measured before its next step.
    assert_no_pod_asked_again_within_a_cooldown(written, cooldown=4.0)
    assert all(n == 1 for n in pod_drain_events(cluster, ns).values())
    done = status(cluster, ns)
    # What the agents were asked, the crashed step included, is what status says was asked.
    assert done["controller"]["requested_total"] == sum(a.count for a in ledger)
    # The resumed episode ends with its Event (posted beside the status write, not before it).
    wait_for("an Event says the pool is balanced",
             lambda: events(cluster, ns, reason="Balanced"), timeout=30)
    assert condition(cluster, ns, "Balanced")["status"] == "True"


def test_of_two_replicas_only_the_lease_holder_delivers(
    cluster, module_namespace, pool, fresh, operators, proxies, tmp_path
):
    ns = module_namespace
    for index in range(2):
        proxy = FaultProxy(upstream=cluster.api_server, pki=cluster.run_dir / "pki").start()
        proxies.append(proxy)
        operators.append(Operator(proxy.kubeconfig(tmp_path / f"replica-{index}.kubeconfig"), ns,
                                  log_of(cluster, f"operator-{ns}-replica-{index}"),
                                  leader_election=True).start())
    leading = wait_for("one replica leads, the other stands by", lambda: (
        sorted(flags := [o.metric("connbalance_leader") or 0.0 for o in operators]) == [0.0, 1.0]
        and flags))
    leader = leading.index(1.0)
    pool.skew()
    kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(ns, cluster.prometheus_url))
    wait_balanced(cluster, ns, pool)

    pods = rf"/api/v1/namespaces/{ns}/pods/[^/]+"
    writes = rf"/apis/connbalance.io/v1alpha1/namespaces/{ns}/connectionbalancers/auth/status"
    drains = [p.requests("PATCH", pods, body="connbalance.io/drain") for p in proxies]
    assert drains[leader], "the leader delivered the drains"
    assert drains[1 - leader] == [], "the standby patched no pod"
    assert proxies[1 - leader].requests("PATCH", writes) == [], "the standby wrote no status"
    log = log_of(cluster, f"operator-{ns}-replica-{leader}").read_text()
    assert "now leading" in log
    assert "now leading" not in log_of(cluster, f"operator-{ns}-replica-{1 - leader}").read_text()
    holder = kubectl(cluster, "get", "lease", "connbalance-leader", "-n", ns,
                     "-o", "jsonpath={.spec.holderIdentity}").stdout
    assert holder, "the Lease names its holder"
    ledger = new_ledger(pool, fresh)
    assert ledger
    assert_nothing_twice_and_caps_held(ledger)
    assert len(drains[leader]) == len(ledger), "one pod write per request, none repeated"


def agent_pid(uid: str) -> int | None:
    """The agent process of the pod with this uid (its state file names the uid)."""
    marker = f"connbalance-e2e-{uid}.json".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"agent" in cmdline:
            return int(entry.name)
    return None


def test_an_agent_sigkilled_mid_request_does_not_resume_it_and_the_operator_reports_it(
    cluster, module_namespace, pool, fresh, operators
):
    ns = module_namespace
    operators.append(Operator(cluster.kubeconfig, ns, log_of(cluster, f"operator-{ns}-agent"))
                     .start())
    loaded = pool.skew()
    actuation = {**HTTP, "windowSeconds": 12, "deadlineSeconds": 30}
    kubectl(cluster, "apply", "-f", "-",
            stdin=balancer_manifest(ns, cluster.prometheus_url, actuation=actuation))
    pod = next(p for p in pool.pods() if p["metadata"]["name"] == loaded)
    ip, uid = pod["status"]["podIP"], pod["metadata"]["uid"]

    def running() -> dict | None:
        try:
            answer = agent_status(ip)
        except OSError:
            return None
        return next((r for r in answer["requests"]
                     if r["state"] == "running" and r["id"] not in fresh), None)

    request = wait_for(f"{loaded}'s agent is in the middle of a request", running)
    pid = agent_pid(uid)
    assert pid is not None, f"the agent process of {loaded}"
    os.kill(pid, signal.SIGKILL)
    restarted = wait_for("the kubelet restarted the agent", lambda: (
        (p := agent_pid(uid)) not in (None, pid) and p))
    assert restarted

    def after_restart() -> dict | None:
        try:
            answer = agent_status(ip)
        except OSError:
            return None
        return next((r for r in answer["requests"] if r["id"] == request["id"]), None)

    reported = wait_for("the restarted agent knows the request", after_restart)
    assert (reported["state"], reported["reason"]) == ("done", "interrupted by restart")
    time.sleep(4)  # the annotation watch offers the request again: it must stay over
    again = after_restart()
    assert again == reported, "the interrupted request was not resumed"

    told = wait_for("the operator reports the interrupted request", lambda: [
        e for e in events(cluster, ns, reason="DrainIncomplete")
        if request["id"] in e["message"] and "interrupted by restart" in e["message"]])
    assert told
    entry = wait_for("status carries the agent's word", lambda: next(
        (e for e in status(cluster, ns).get("pods") or []
         if e.get("lastDrain") == request["id"] and e.get("lastDrainState") == "done"), None))
    assert entry["lastDrainReason"] == "interrupted by restart"
    ledger = new_ledger(pool, fresh)
    assert_nothing_twice_and_caps_held(ledger)


def test_an_agent_the_operator_cannot_reach_still_gets_the_request_and_the_failure_is_told(
    cluster, module_namespace, pool, fresh, operators
):
    ns = module_namespace
    operators.append(Operator(cluster.kubeconfig, ns, log_of(cluster, f"operator-{ns}-http"))
                     .start())
    loaded = pool.skew()
    # Nothing listens on this port at the pods: every POST fails, as behind a NetworkPolicy
    # that lets the API server's annotation through and not the operator's traffic.
    actuation = {**HTTP, "agentPort": 9096}
    kubectl(cluster, "apply", "-f", "-",
            stdin=balancer_manifest(ns, cluster.prometheus_url, actuation=actuation))
    failed = wait_for("an Event says the POST failed", lambda: [
        e for e in events(cluster, ns, reason="DeliveryFailed")
        if ":9096/v1/drain unreachable" in e["message"]])
    ip = pool.ready()[loaded]
    assert any(f"http://{ip}:9096/v1/drain" in e["message"] for e in failed)
    carried = drain_annotations(pool.pods())
    assert loaded in carried, "the annotation still carries the request"
    rid = carried[loaded]["id"]
    ledger = wait_for("the agent acted on the annotation", lambda: [
        a for a in new_ledger(pool, fresh) if a.id == rid])
    assert ledger[0].state in ("running", "done")
    ready = wait_for("status says the delivery failed", lambda: (
        (c := condition(cluster, ns, "Ready")).get("reason") == "DeliveryFailed" and c))
    assert ready["status"] == "False"
    assert ":9096/v1/drain unreachable" in ready["message"]
    assert_nothing_twice_and_caps_held(new_ledger(pool, fresh))
