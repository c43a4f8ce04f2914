"""Faults between the operator and the API server, and pods that change under it, on a
StatefulSet pool (names come back, uids do not), one pool for the module.

Through the fault proxy (tests/kube/faultproxy.py): 409 Conflict on status writes and on the pod
writes that carry drain requests, and watches answered 410 Gone; these the operator retries
silently, so nothing is lost or doubled and no error reaches status. Without the proxy's
answers, the real cases: a pod replaced under the same name while a request to it is on its way
fails the uid precondition at the API server; a pod deleted while it drains comes back without
its predecessor's request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.pool import agent_status
from tests.faults.kit import (
    Acted,
    Operator,
    Pool,
    StatusRecorder,
    acted_ids,
    agents_ledger,
    assert_no_pod_asked_again_within_a_cooldown,
    assert_nothing_twice_and_caps_held,
    balancer_manifest,
    delivered,
    drain_annotations,
    events,
    kubectl,
    status,
    wait_balanced,
    wait_for,
)
from tests.kube.faultproxy import FaultProxy, Rule

pytestmark = pytest.mark.cluster
ERRORS = ("DeliveryFailed", "DrainRefused", "InvalidSpec", "FleetUnavailable")


@pytest.fixture(scope="module")
def pool(cluster: Cluster, module_namespace: str) -> Iterator[Pool]:
    running = Pool(cluster, module_namespace, kind="StatefulSet")
    running.deploy()
    yield running
    running.close()


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    running = FaultProxy(upstream=cluster.api_server, pki=cluster.run_dir / "pki").start()
    yield running
    running.stop()


@pytest.fixture
def operator(cluster: Cluster, module_namespace: str, proxy: FaultProxy,
             tmp_path: Path) -> Iterator[Operator]:
    ns = module_namespace
    running = Operator(proxy.kubeconfig(tmp_path / "proxy.kubeconfig"), ns,
                       cluster.run_dir / "logs" / f"operator-{ns}-{tmp_path.name}.log")
    yield running
    running.kill()


@pytest.fixture
def fresh(cluster: Cluster, module_namespace: str, pool: Pool) -> Iterator[set[str]]:
    """The ids acted on before this test; afterwards the balancer and its requests are gone."""
    yield acted_ids(agents_ledger(pool.uids))
    kubectl(cluster, "delete", "connectionbalancer", "auth", "-n", module_namespace,
            "--ignore-not-found", "--timeout=30s")
    kubectl(cluster, "annotate", "pods", "-n", module_namespace, "--all",
            "connbalance.io/drain-", check=False)


def new_ledger(pool: Pool, before: set[str]) -> list[Acted]:
    return [a for a in agents_ledger(pool.uids) if a.id not in before]


def assert_no_error_reached_status(cluster: Cluster, ns: str, seen: StatusRecorder) -> None:
    assert seen.failed_conditions("Ready") == [], "no error reached status"
    assert seen.failed_conditions("MetricsAvailable") == []
    told = [e for reason in ERRORS for e in events(cluster, ns, reason=reason)]
    assert told == [], f"no Warning was posted: {told}"


def apply_balancer(cluster: Cluster, ns: str) -> None:
    kubectl(cluster, "apply", "-f", "-",
            stdin=balancer_manifest(ns, cluster.prometheus_url, workload="StatefulSet"))


def test_conflicts_on_status_and_on_pod_writes_are_retried_silently(
    cluster, module_namespace, pool, fresh, proxy, operator
):
    ns = module_namespace
    pods = proxy.add(Rule("conflict", "PATCH", rf"/api/v1/namespaces/{ns}/pods/[^/]+",
                          body="connbalance.io/drain", times=2))
    writes = proxy.add(Rule(
        "conflict", "PATCH",
        rf"/apis/connbalance.io/v1alpha1/namespaces/{ns}/connectionbalancers/auth/status",
        times=3))
    pool.skew()
    operator.start()
    with StatusRecorder(cluster, ns) as seen:
        apply_balancer(cluster, ns)
        wait_balanced(cluster, ns, pool)
    assert (pods.hits, writes.hits) == (2, 3), "every conflict was answered"
    assert_no_error_reached_status(cluster, ns, seen)
    ledger = new_ledger(pool, fresh)
    assert ledger, "the pool was rebalanced after the conflicts"
    assert_nothing_twice_and_caps_held(ledger)
    writes_seen = proxy.requests("PATCH", rf"/api/v1/namespaces/{ns}/pods/[^/]+",
                                 body="connbalance.io/drain")
    landed = [s for s in writes_seen if s.status == 200]
    assert len(landed) == len(ledger), "each request written once, none repeated"
    # Each step measured before the next (window 2 s + interval 2 s), though status, where the
    # last step is remembered, could not be written for several of them.
    assert_no_pod_asked_again_within_a_cooldown(delivered(proxy, ns), cooldown=4.0)


def test_watches_answered_410_gone_are_watched_again(
    cluster, module_namespace, pool, fresh, proxy, operator
):
    ns = module_namespace
    gone = [
        proxy.add(Rule("gone", "GET", rf"/api/v1/namespaces/{ns}/pods", query="watch=true",
                       times=2)),
        proxy.add(Rule("gone", "GET",
                       rf"/apis/connbalance.io/v1alpha1/namespaces/{ns}/connectionbalancers",
                       query="watch=true", times=2)),
    ]
    operator.start()
    wait_for("both watches were answered 410", lambda: all(r.hits == 2 for r in gone))
    pool.skew()
    with StatusRecorder(cluster, ns) as seen:
        apply_balancer(cluster, ns)
        wait_balanced(cluster, ns, pool)
    for path in (rf"/api/v1/namespaces/{ns}/pods",
                 rf"/apis/connbalance.io/v1alpha1/namespaces/{ns}/connectionbalancers"):
        watches = [s for s in proxy.requests("GET", path) if "watch=true" in s.query]
        assert [s.injected for s in watches[:2]] == ["gone", "gone"]
        assert any(s.status == 200 and not s.injected for s in watches[2:]), (
            f"{path} was watched again after the 410s")
    assert_no_error_reached_status(cluster, ns, seen)
    assert_nothing_twice_and_caps_held(new_ledger(pool, fresh))


def replaced(pool: Pool, name: str, old_uid: str) -> dict | None:
    """The pod of that name once it is a new one and Ready."""
    for pod in pool.pods():
        meta = pod["metadata"]
        if meta["name"] == name and meta["uid"] != old_uid and name in pool.ready():
            return pod
    return None


def test_a_request_to_a_pod_replaced_under_the_same_name_fails_its_uid_precondition_quietly(
    cluster, module_namespace, pool, fresh, proxy, operator
):
    ns = module_namespace
    loaded = pool.skew()
    old = next(p for p in pool.pods() if p["metadata"]["name"] == loaded)["metadata"]["uid"]
    held = proxy.add(Rule("hold", "PATCH", rf"/api/v1/namespaces/{ns}/pods/{loaded}",
                          body="connbalance.io/drain"))
    operator.start()
    with StatusRecorder(cluster, ns) as seen:
        apply_balancer(cluster, ns)
        wait_for(f"a request to {loaded} is on its way", lambda: held.hits == 1)
        kubectl(cluster, "delete", "pod", loaded, "-n", ns, "--timeout=60s")
        fresh_pod = wait_for(f"{loaded} replaced and Ready", lambda: replaced(pool, loaded, old))
        proxy.release(held)
        refused = wait_for("the API server answered the held write", lambda: [
            s for s in proxy.requests("PATCH", rf"/api/v1/namespaces/{ns}/pods/{loaded}",
                                      body="connbalance.io/drain") if s.injected == "hold"])
        wait_balanced(cluster, ns, pool)
    assert refused[0].status == 422, "the stale uid was refused by the real API server"
    assert f'"uid": "{old}"' in refused[0].body
    new_uid = fresh_pod["metadata"]["uid"]
    later = drain_annotations(p for p in pool.pods() if p["metadata"]["uid"] == new_uid)
    ledger = new_ledger(pool, fresh)
    held_request = refused[0].body
    assert not any(a.id in held_request for a in ledger), "the refused request was acted on"
    assert all(r["id"] not in held_request for r in later.values())
    assert_no_error_reached_status(cluster, ns, seen)
    assert_nothing_twice_and_caps_held(ledger)


def test_a_pod_deleted_while_it_drains_comes_back_without_its_request(
    cluster, module_namespace, pool, fresh, proxy, operator
):
    ns = module_namespace
    loaded = pool.skew()
    pod = next(p for p in pool.pods() if p["metadata"]["name"] == loaded)
    old, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
    operator.start()
    actuation = {"windowSeconds": 10, "deadlineSeconds": 30}
    with StatusRecorder(cluster, ns) as seen:
        kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(
            ns, cluster.prometheus_url, workload="StatefulSet", actuation=actuation))

        def draining() -> dict | None:
            try:
                answer = agent_status(ip)
            except OSError:
                return None
            return next((r for r in answer["requests"]
                         if r["state"] == "running" and r["id"] not in fresh), None)

        request = wait_for(f"{loaded} drains", draining)
        kubectl(cluster, "delete", "pod", loaded, "-n", ns, "--timeout=60s")
        back = wait_for(f"{loaded} back as a new pod", lambda: replaced(pool, loaded, old))
        wait_balanced(cluster, ns, pool)
    assert all(r["id"] != request["id"] for r in drain_annotations([back]).values())
    by_uid = {a.uid: a for a in new_ledger(pool, fresh) if a.id == request["id"]}
    assert list(by_uid) == [old], "only the deleted pod's agent ever had the request"
    assert_nothing_twice_and_caps_held(new_ledger(pool, fresh))
    # What changed is told: the operator said when it was balanced again. (Whether a status
    # write lands while the new pod settles depends on how fast the pod comes back, so the
    # phases in between are not asserted.)
    assert status(cluster, ns)["phase"] == "Balanced", seen.phases()
    wait_for("an Event says the pool is balanced again",
             lambda: events(cluster, ns, reason="Balanced"), timeout=30)
