"""The ConnectionBalancer CRD on a real API server: its validation and its defaults.

The operator's behaviour on the cluster (rollout, dry run, pause, leader failover, no
convergence, deletion) is in test_operator_scenarios.py, which shares one chart install and one
pool among those scenarios.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.cluster.cluster import Cluster
from tests.e2e.scenario_kit import apply_crd, balancer_manifest, kubectl

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    apply_crd(cluster)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"balance": {"tolerance": 20}}, "spec.balance.tolerance"),
        ({"balance": {"mode": "sometimes"}}, "spec.balance.mode"),
        ({"balance": {"tolerance": 0.1, "targetTolerance": 0.5}}, "spec.balance.targetTolerance"),
        ({"metrics": {"preset": "custom"}}, "spec.metrics.query"),
        ({"actuation": {"steer": "yes"}}, "spec.actuation.steer"),
        ({"selector": None}, "spec.selector"),
    ],
)
def test_the_api_server_rejects_a_bad_balancer_naming_the_field(
    cluster: Cluster, namespace: str, crd: None, spec: dict[str, Any], named: str
) -> None:
    manifest = yaml.safe_load(balancer_manifest(namespace, **spec))
    if manifest["spec"].get("selector") is None:
        del manifest["spec"]["selector"]
    done = cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert done.returncode != 0
    assert named in done.stderr
    listed = kubectl(cluster, "get", "connectionbalancers", "-n", namespace, "-o", "json")
    assert json.loads(listed)["items"] == []


def test_the_api_server_fills_in_every_default(cluster: Cluster, namespace: str, crd: None) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=balancer_manifest(namespace, paused=True))
    stored = json.loads(
        kubectl(cluster, "get", "connectionbalancer", "auth", "-n", namespace, "-o", "json")
    )
    assert stored["spec"]["balance"]["maxFractionPerStep"] == 0.25
    assert stored["spec"]["actuation"]["method"] == "annotation"
    assert stored["spec"]["metrics"]["preset"] == "teleport-auth"
