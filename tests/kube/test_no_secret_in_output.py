"""No token in output: a drain with ``method: http`` (the agent's bearer token from a Secret)
and a Prometheus bearer token from a Secret, run end to end with the operator as a process
against the real API server and the cluster's Prometheus; then the operator's log, every Event
in the namespace and the ConnectionBalancer (status and all) are searched for either value,
plain and base64. The tokens must have been used: the agents took the POSTs (none refused as
unauthorized) and the balancer read its load (MetricsAvailable).

The pool, the skew and the operator process are the fault tests' (tests/faults/kit.py).
"""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
import yaml

from tests.cluster.cluster import Cluster
from tests.e2e.pool import HTTP_PORT
from tests.e2e.scenario_kit import apply_crd
from tests.faults.kit import (
    TOKEN,
    Operator,
    Pool,
    balancer_manifest,
    condition,
    kubectl,
    status,
    wait_for,
)

pytestmark = pytest.mark.cluster
PROMETHEUS_TOKEN = "prometheus-bearer-5e1f0c2a9b"


def forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode()]


def agent_counts(ip: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{ip}:{HTTP_PORT}/metrics", timeout=3) as answer:
        text = answer.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("connbalance_agent_requests_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = float(line.rsplit(" ", 1)[1])
    return counts


def test_no_token_or_secret_value_reaches_the_log_the_events_or_the_status(
    cluster: Cluster, namespace: str
):
    apply_crd(cluster)
    pool = Pool(cluster, namespace)
    pool.deploy()
    log = cluster.run_dir / "logs" / f"operator-{namespace}-secrets.log"
    operator = Operator(cluster.kubeconfig, namespace, log).start()
    try:
        secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": "prom-token", "namespace": namespace},
                  "stringData": {"token": PROMETHEUS_TOKEN}}  # fmt: skip
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(secret))
        pool.skew()
        manifest = balancer_manifest(
            namespace, cluster.prometheus_url,
            metrics={"preset": "teleport-auth", "maxStalenessSeconds": 20,
                     "prometheus": {"url": cluster.prometheus_url,
                                    "bearerTokenSecret": {"name": "prom-token"}}},
            actuation={"method": "http", "tokenSecret": {"name": "agent-token"},
                       "windowSeconds": 2, "quietMillis": 100, "deadlineSeconds": 10},
        )  # fmt: skip
        kubectl(cluster, "apply", "-f", "-", stdin=manifest)
        drained = wait_for("a drain delivered over HTTP and confirmed done", lambda: [
            e for e in status(cluster, namespace).get("pods") or []
            if e.get("lastDrain") and e.get("lastDrainState") == "done"], timeout=180)
        assert condition(cluster, namespace, "MetricsAvailable")["status"] == "True"
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pool.pods()}
        counts = agent_counts(ips[drained[0]["name"]])
        assert counts.get("unauthorized", 0) == 0, counts
        # The request came by annotation and by POST: one accepted, the other a duplicate.
        assert counts.get("accepted", 0) >= 1, counts
        assert counts.get("accepted", 0) + counts.get("duplicate", 0) >= 2, counts
    finally:
        operator.kill()
        pool.close()

    outputs = {
        "the operator's log": log.read_text(errors="replace"),
        "the Events": kubectl(cluster, "get", "events", "-n", namespace, "-o", "json").stdout,
        "the ConnectionBalancer": json.dumps(status(cluster, namespace)) + kubectl(
            cluster, "get", "connectionbalancer", "auth", "-n", namespace, "-o", "json").stdout,
    }  # fmt: skip
    assert "DrainRequested" in outputs["the Events"]  # the search below searched something
    assert len(outputs["the operator's log"]) > 1000
    # The search finds a token where one is: in its own Secret, base64-encoded.
    held = kubectl(cluster, "get", "secret", "agent-token", "-n", namespace, "-o", "json").stdout
    assert any(value in held for value in forms(TOKEN))
    leaks = [
        f"{where} holds {value!r}"
        for where, text in outputs.items()
        for secret in (TOKEN, PROMETHEUS_TOKEN)
        for value in forms(secret)
        if value in text
    ]
    assert leaks == []
