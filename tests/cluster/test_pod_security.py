"""Pod Security admission on the recipe: the reset-mode sidecar, read verbatim from
docs/teleport/values.yaml, needs a ``privileged`` namespace; the proxy-mode sidecar
(manifests/examples/agent-sidecar.yaml) passes ``baseline``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.cluster import Cluster
from tests.e2e.teleport_pool import ROOT, auth_manifest, auth_objects, recipe_values
from tests.waiting import eventually

PROXY_MODE = ROOT / "manifests" / "examples" / "agent-sidecar.yaml"


def enforce(cluster: Cluster, namespace: str, level: str) -> None:
    cluster.run_kubectl(
        "label", "--overwrite", "namespace", namespace,
        f"pod-security.kubernetes.io/enforce={level}",
    )  # fmt: skip


def auth_pod(namespace: str, values: dict[str, Any]) -> str:
    """One pod of the chart's auth template with ``values``' sidecars and volumes, and the
    ServiceAccount and ConfigMap it needs."""
    objects = auth_objects(namespace=namespace, values=values)
    (deployment,) = (o for o in objects if o["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "auth", "namespace": namespace, **template["metadata"]},
           "spec": template["spec"]}  # fmt: skip
    needed = [o for o in objects if o["kind"] in ("ServiceAccount", "ConfigMap")]
    return yaml.safe_dump_all([*needed, pod])


def apply(cluster: Cluster, manifest: str) -> Any:
    return cluster.run_kubectl("apply", "-f", "-", stdin=manifest, check=False)


@pytest.mark.cluster
def test_baseline_refuses_the_recipes_sidecar_naming_net_admin(
    cluster: Cluster, namespace: str
) -> None:
    enforce(cluster, namespace, "baseline")
    done = apply(cluster, auth_pod(namespace, recipe_values()))
    assert done.returncode != 0
    assert 'violates PodSecurity "baseline:latest"' in done.stderr
    assert 'container "connbalance-agent" must not include "NET_ADMIN"' in done.stderr


@pytest.mark.cluster
def test_privileged_admits_the_recipes_sidecar(cluster: Cluster, namespace: str) -> None:
    enforce(cluster, namespace, "privileged")
    done = apply(cluster, auth_pod(namespace, recipe_values()))
    assert done.returncode == 0, done.stderr
    assert "pod/auth created" in done.stdout


@pytest.mark.cluster
def test_baseline_admits_the_proxy_mode_sidecar(cluster: Cluster, namespace: str) -> None:
    enforce(cluster, namespace, "baseline")
    done = apply(cluster, auth_pod(namespace, yaml.safe_load(PROXY_MODE.read_text())))
    assert done.returncode == 0, done.stderr
    assert "PodSecurity" not in done.stderr  # not even a warning


@pytest.mark.cluster
def test_adding_the_sidecar_under_baseline_leaves_auth_one_replica_short(
    cluster: Cluster, namespace: str
) -> None:
    enforce(cluster, namespace, "baseline")
    fast = {"grace_seconds": 2, "prestop_seconds": 0, "min_ready_seconds": 0,
            "probe_period_seconds": 1}  # fmt: skip
    cluster.run_kubectl("apply", "-f", "-", stdin=auth_manifest(namespace=namespace, values={},
                                                                **fast))  # fmt: skip
    cluster.run_kubectl(
        "rollout", "status", "-n", namespace, "deployment/teleport-auth", "--timeout=120s"
    )
    # The upgrade that adds the recipe: the Deployment itself is admitted (Pod Security judges
    # pods), one old pod goes (maxUnavailable 1, maxSurge 0), and every new pod is refused.
    upgraded = apply(cluster, auth_manifest(namespace=namespace, **fast))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "NET_ADMIN" in upgraded.stderr  # the API server's warning at apply time

    def refused() -> str:
        events = json.loads(cluster.run_kubectl(
            "get", "events", "-n", namespace, "--field-selector=reason=FailedCreate", "-o", "json"
        ).stdout)["items"]  # fmt: skip
        return next((e["message"] for e in events if "NET_ADMIN" in e["message"]), "")

    message = eventually(refused, what="the ReplicaSet reports a refused pod")
    assert 'violates PodSecurity "baseline:latest"' in message

    def available() -> int:
        status = json.loads(cluster.run_kubectl(
            "get", "deployment/teleport-auth", "-n", namespace, "-o", "json"
        ).stdout)["status"]  # fmt: skip
        return int(status.get("availableReplicas", 0))

    eventually(lambda: available() == 2, what="one old pod is gone")
    time.sleep(5)  # and no new one comes
    assert available() == 2


def test_the_values_files_differ_only_by_the_token_for_method_http() -> None:
    annotation = recipe_values()
    http = recipe_values(ROOT / "docs" / "teleport" / "values-http.yaml")
    (agent,) = http["auth"]["extraContainers"]
    token = "--token-file=/etc/connbalance/token/token"
    agent["args"].remove(token)
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "connbalance-token"]
    agent["volumeMounts"].remove(mount)
    (volume,) = [v for v in http["auth"]["extraVolumes"] if v["name"] == "connbalance-token"]
    http["auth"]["extraVolumes"].remove(volume)
    assert http == annotation
    assert token.split("=", 1)[1].startswith(mount["mountPath"] + "/")
    assert volume["secret"]["secretName"] == "connbalance-agent-token"


def test_the_recipes_paths_are_on_its_volumes() -> None:
    (agent,) = recipe_values()["auth"]["extraContainers"]
    mounts = [Path(m["mountPath"]) for m in agent["volumeMounts"]]
    files = [a.split("=", 1)[1] for a in agent["args"] if a.endswith((".json", "annotations"))]
    assert len(files) == 2
    assert all(any(Path(f).parent == m for m in mounts) for f in files)
