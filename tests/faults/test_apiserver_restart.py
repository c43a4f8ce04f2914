"""The API server restarted while a step drains, on a private cluster (the shared one serves
other tests): the operator and the agents lose every watch and write for some seconds, then the
pool is balanced with each request acted on once, and status accounts for every request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.pool import agent_status
from tests.e2e.scenario_kit import apply_crd
from tests.faults.kit import (
    Operator,
    Pool,
    agents_ledger,
    assert_nothing_twice_and_caps_held,
    balancer_manifest,
    condition,
    events,
    kubectl,
    status,
    wait_balanced,
    wait_for,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(run_dir=tmp_path_factory.mktemp("private-cluster"))
    running.start()
    try:
        apply_crd(running)
        yield running
    finally:
        running.stop()


def test_an_api_server_restarted_mid_drain_loses_and_doubles_nothing(private):
    cluster = private
    kubectl(cluster, "create", "namespace", "restart")
    pool = Pool(cluster, "restart")
    pool.deploy()
    operator = Operator(cluster.kubeconfig, "restart",
                        cluster.run_dir / "logs" / "operator.log").start()
    try:
        loaded = pool.skew()
        ip = pool.ready()[loaded]
        kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(
            "restart", cluster.prometheus_url,
            actuation={"windowSeconds": 6, "deadlineSeconds": 20}))
        wait_for(f"{loaded} drains", lambda: any(
            r["state"] == "running" for r in agent_status(ip)["requests"]))
        cluster.restart_apiserver()
        wait_balanced(cluster, "restart", pool, timeout=180)
        assert operator.process is not None
        assert operator.process.poll() is None, "the operator lived through it"
    finally:
        operator.kill()
        pool.close()
    ledger = agents_ledger(pool.uids)
    assert ledger
    assert_nothing_twice_and_caps_held(ledger)
    assert status(cluster, "restart")["controller"]["requested_total"] == sum(
        a.count for a in ledger)
    assert condition(cluster, "restart", "Balanced")["status"] == "True"
    wait_for("the Balanced Event", lambda: events(cluster, "restart", reason="Balanced"), 60)
