"""The auth pods of the official teleport-cluster chart, as its render makes them, for the test
cluster: the ServiceAccount, the config ConfigMap, the ``<release>-auth`` Deployment and Service.

The recipe's sidecar and volumes come verbatim from ``docs/teleport/values.yaml``
(``auth.extraContainers``, ``auth.extraVolumes``) and land where the chart's template puts them:
the sidecars after the teleport container, the volumes after the chart's own.

Shaped like the chart's templates (``templates/auth/deployment.yaml`` and ``service.yaml`` in
gravitational/teleport ``examples/chart/teleport-cluster``): the selector labels
``app.kubernetes.io/name``, ``instance`` and ``component: auth``; with more than one replica,
strategy ``maxSurge: 0, maxUnavailable: 1`` and ``minReadySeconds`` (else ``Recreate``); ports
diag 3000, auth 3025, kube 3026; liveness ``/healthz`` and readiness ``/readyz`` on diag; a preStop
wait; ``automountServiceAccountToken: false`` with the projected token mounted into the teleport
container only; ``terminationGracePeriodSeconds: 60``; the preferred anti-affinity and spread.

Adapted only where the test kubelet requires it:
- the teleport container runs the simulated auth server, ``python -m connbalance_sim.server``, on
  ``$(POD_IP):3025`` with its metrics (``teleport_connected_resources``) on ``$(POD_IP):3000``,
  instead of ``teleport start --diag-addr=0.0.0.0:3000``: there is no teleport binary, and every
  pod here shares the host's network namespace, so nothing may bind 0.0.0.0. Nothing listens on
  the kube port. ``POD_IP`` comes from the downward API, as the recipe's sidecar gets it;
- its preStop ``teleport wait duration 30s`` is ``sleep 30`` (``prestop_seconds``);
- ``terminationGracePeriodSeconds`` (``grace_seconds``), ``minReadySeconds`` and the probes'
  period are parameters with the chart's values as defaults, so tests can shorten them;
- the pods carry ``prometheus.io/scrape`` and ``prometheus.io/port: "3000"`` annotations: the test
  cluster's Prometheus discovers pods by annotation, where the recipe's ``podMonitor.enabled``
  makes the Prometheus Operator scrape the diag port.
The sidecar is not adapted: the test kubelet ignores its image, runs ``connbalance agent`` from
the venv, expands ``$(POD_IP)`` and rewrites its mount paths to the volumes' directories.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "docs" / "teleport" / "values.yaml"
DIAG_PORT, AUTH_PORT, KUBE_PORT, AGENT_PORT = 3000, 3025, 3026, 9095
CHART, CHART_VERSION, TELEPORT_VERSION = "teleport-cluster", "18.1.4", "18.1.4"

# A stand-in for the chart's generated teleport.yaml (the simulated server reads no config).
TELEPORT_CONFIG = """version: v3
kubernetes_service: {enabled: true, listen_addr: 0.0.0.0:3026}
proxy_service: {enabled: false}
ssh_service: {enabled: false}
auth_service: {enabled: true, cluster_name: test.example.com}
teleport: {auth_server: 127.0.0.1:3025}
"""


def recipe_values(path: Path = RECIPE) -> dict[str, Any]:
    """The recipe's chart values, as a user passes them with ``-f``."""
    return dict(yaml.safe_load(path.read_text()))


def selector_labels(release: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": CHART,
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": "auth",
    }


def labels(release: str) -> dict[str, str]:
    return {
        **selector_labels(release),
        "helm.sh/chart": f"{CHART}-{CHART_VERSION}",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/version": TELEPORT_VERSION,
        "teleport.dev/majorVersion": TELEPORT_VERSION.split(".")[0],
    }


def teleport_container(*, prestop_seconds: int, probe_period_seconds: int) -> dict[str, Any]:
    def probe(path: str, **counts: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "diag"}, "timeoutSeconds": 1, **counts}

    return {
        "name": "teleport",
        "image": f"public.ecr.aws/gravitational/teleport-distroless:{TELEPORT_VERSION}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "connbalance_sim.server"],
        "args": ["--listen", f"$(POD_IP):{AUTH_PORT}", "--metrics", f"$(POD_IP):{DIAG_PORT}"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [
            {"name": "diag", "containerPort": DIAG_PORT, "protocol": "TCP"},
            {"name": "auth", "containerPort": AUTH_PORT, "protocol": "TCP"},
            {"name": "kube", "containerPort": KUBE_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": probe(
            "/healthz", initialDelaySeconds=5, periodSeconds=5, failureThreshold=6
        ),
        "readinessProbe": probe(
            "/readyz",
            initialDelaySeconds=probe_period_seconds,
            periodSeconds=probe_period_seconds,
            failureThreshold=12,
            successThreshold=1,
        ),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(prestop_seconds)]}}},
        "volumeMounts": [
            {"mountPath": "/etc/teleport", "name": "config", "readOnly": True},
            {"mountPath": "/var/lib/teleport", "name": "data"},
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": "auth-serviceaccount-token",
                "readOnly": True,
            },
        ],
    }


def chart_volumes(release: str) -> list[dict[str, Any]]:
    """The chart's own volumes of the auth pod (``data`` as in its aws and gcp modes)."""
    token = {
        "name": "auth-serviceaccount-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token"}},
                {
                    "configMap": {
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        "name": "kube-root-ca.crt",
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ]
        },
    }
    config = {"name": "config", "configMap": {"name": f"{release}-auth"}}
    return [token, config, {"name": "data", "emptyDir": {}}]


def auth_objects(
    *,
    namespace: str,
    release: str = "teleport",
    replicas: int = 3,
    values: Mapping[str, Any] | None = None,
    grace_seconds: int = 60,
    prestop_seconds: int = 30,
    min_ready_seconds: int = 15,
    probe_period_seconds: int = 5,
) -> list[dict[str, Any]]:
    """The chart's auth objects with ``values`` (default: the recipe's; ``{}`` for none)."""
    values = recipe_values() if values is None else values
    auth = values.get("auth") or {}
    extra_containers = copy.deepcopy(auth.get("extraContainers") or values.get("extraContainers"))
    extra_volumes = copy.deepcopy(auth.get("extraVolumes") or values.get("extraVolumes"))
    name, meta = f"{release}-auth", {"namespace": namespace}
    pod_labels = {**labels(release), "app": release}
    selector = selector_labels(release)
    checksum = hashlib.sha256(TELEPORT_CONFIG.encode()).hexdigest()
    spread = {"whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}
    pod_spec: dict[str, Any] = {
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", **spread},
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", **spread},
        ],
        "containers": [
            teleport_container(
                prestop_seconds=prestop_seconds, probe_period_seconds=probe_period_seconds
            ),
            *(extra_containers or []),
        ],
        "automountServiceAccountToken": False,
        "volumes": [*chart_volumes(release), *(extra_volumes or [])],
        "serviceAccountName": release,
        "terminationGracePeriodSeconds": grace_seconds,
    }
    if replicas > 1:
        term = {
            "labelSelector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/instance", "operator": "In", "values": [release]},
                    {"key": "app.kubernetes.io/component", "operator": "In", "values": ["auth"]},
                ]
            },
            "topologyKey": "kubernetes.io/hostname",
        }
        preferred = [{"weight": 50, "podAffinityTerm": term}]
        pod_spec["affinity"] = {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}
        }
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        "strategy": (
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
            if replicas > 1
            else {"type": "Recreate"}
        ),
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {
                "annotations": {
                    "checksum/config": checksum,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(DIAG_PORT),
                },
                "labels": pod_labels,
            },
            "spec": pod_spec,
        },
    }
    if replicas > 1 and min_ready_seconds:
        deployment_spec["minReadySeconds"] = min_ready_seconds
    service_ports = [
        {"name": "auth", "port": AUTH_PORT, "targetPort": AUTH_PORT, "protocol": "TCP"},
        {"name": "kube", "port": KUBE_PORT, "targetPort": KUBE_PORT, "protocol": "TCP"},
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": release, **meta, "labels": labels(release)}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": name, **meta, "labels": labels(release)},
         "data": {"teleport.yaml": TELEPORT_CONFIG}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, **meta, "labels": {**labels(release), "app": release}},
         "spec": deployment_spec},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, **meta, "labels": labels(release)},
         "spec": {"ports": service_ports, "selector": selector}},
    ]  # fmt: skip


def auth_manifest(**options: Any) -> str:
    """``auth_objects(**options)`` as one YAML stream, for ``kubectl apply -f -``."""
    return yaml.safe_dump_all(auth_objects(**options), sort_keys=False)


def recipe_sidecar(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's agent container, as written in its values."""
    values = recipe_values() if values is None else values
    (agent,) = (c for c in values["auth"]["extraContainers"] if c["name"] == "connbalance-agent")
    return dict(agent)
