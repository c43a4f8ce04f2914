"""Prometheus down, then stale, then answering garbage, in front of a skewed pool: each time the
MetricsAvailable condition and an Event say what is wrong and nothing is drained; once Prometheus
answers again the operator balances the pool, acting on each request once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster
from tests.faults.kit import (
    Operator,
    Pool,
    acted_ids,
    agents_ledger,
    assert_nothing_twice_and_caps_held,
    balancer_manifest,
    condition,
    drain_annotations,
    events,
    kubectl,
    status,
    wait_balanced,
    wait_for,
)
from tests.faults.promproxy import PrometheusProxy

pytestmark = pytest.mark.cluster
# Long enough for several ticks (stepIntervalSeconds is 2) in each fault.
HOLD_SECONDS = 6


@pytest.fixture
def pool(cluster: Cluster, namespace: str, crd: None) -> Iterator[Pool]:
    running = Pool(cluster, namespace)
    running.deploy()
    yield running
    running.close()


@pytest.fixture
def prometheus(cluster: Cluster) -> Iterator[PrometheusProxy]:
    running = PrometheusProxy(upstream=cluster.prometheus_url).start()
    yield running
    running.stop()


def test_prometheus_down_stale_or_garbled_is_told_and_nothing_is_drained_until_it_recovers(
    cluster, namespace, pool, prometheus
):
    before = acted_ids(agents_ledger(pool.uids))
    prometheus.set("down")
    pool.skew()
    operator = Operator(cluster.kubeconfig, namespace,
                        cluster.run_dir / "logs" / f"operator-{namespace}.log").start()
    try:
        kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(namespace, prometheus.url))
        for mode, reason in (("down", "PrometheusUnreachable"), ("stale", "StaleSamples"),
                             ("garbage", "PrometheusHTTPError")):
            prometheus.set(mode)
            told = wait_for(f"Prometheus {mode} is told", lambda r=reason: (
                (c := condition(cluster, namespace, "MetricsAvailable")).get("reason") == r
                and c))
            assert told["status"] == "False"
            assert events(cluster, namespace, reason=reason), f"an Event {reason}"
            queried = prometheus.queries
            time.sleep(HOLD_SECONDS)
            assert status(cluster, namespace)["phase"] == "Degraded"
            assert mode == "down" or prometheus.queries > queried, "the operator kept looking"
            assert drain_annotations(pool.pods()) == {}, f"nothing drained while {mode}"
            assert acted_ids(agents_ledger(pool.uids)) == before
        prometheus.set("pass")
        wait_for("metrics available again", lambda: condition(
            cluster, namespace, "MetricsAvailable").get("status") == "True")
        wait_balanced(cluster, namespace, pool)
    finally:
        operator.kill()
    ledger = [a for a in agents_ledger(pool.uids) if a.id not in before]
    assert ledger, "the pool was rebalanced once Prometheus answered"
    assert_nothing_twice_and_caps_held(ledger)
