"""The Python checks and the real API server agree on every spec, case by case.

Each case goes to ``Policy.from_spec`` and, as a server-side dry run with strict field
validation, to the test control plane holding the generated CRD. Both must accept it, or both
must refuse it naming the same field. The per-setting cases are made from the declaration, one
bad value each, so a setting added to the table is tried on both sides without a new line here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from connbalance.kube.crd import GROUP, PLURAL, VERSION
from connbalance.model import Policy, PolicyError
from connbalance.model.settings import FIELDS, Setting
from tests.cluster.cluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {"selector": {"matchLabels": {"app": "auth"}}}


def nested(path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    node: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


def bad_value(setting: Setting) -> Any:
    if setting.kind is bool:
        return "yes"
    if setting.kind is str:
        return "no-such-choice" if setting.choices else ""
    if setting.maximum is not None:
        return setting.maximum * 2 + 1
    return -1


def below_minimum(minimum: float) -> float:
    """A value under the bound; for a fractional bound the whole number under it, which the
    API server's own minimum check lets through (it truncates the bound for integers)."""
    return math.floor(minimum) if not float(minimum).is_integer() else minimum - 1


PER_SETTING = [
    pytest.param(nested(s.path, bad_value(s)), "spec." + s.path, id=f"bad-{s.path}")
    for s in FIELDS
] + [
    pytest.param(nested(s.path, below_minimum(s.minimum)), "spec." + s.path, id=f"low-{s.path}")
    for s in FIELDS
    if s.minimum is not None
]

HANDWRITTEN = [
    pytest.param({}, None, id="defaults-only"),
    pytest.param({"balance": {"tolerance": 0.5, "targetTolerance": 0.2}}, None, id="hysteresis"),
    pytest.param({"metrics": {"preset": "custom", "query": "up"}}, None, id="custom-query"),
    pytest.param({"workloadRef": {"name": "auth"}}, None, id="workload-kind-defaulted"),
    pytest.param(
        {"metrics": {"prometheus": {"headers": {"X-Scope-OrgID": "t1"}}}}, None, id="header"
    ),
    pytest.param({"metrics": {"prometheus": {"insecureSkipVerify": True}}}, None, id="skip-tls"),
    pytest.param({"balance": {"maxConnectionsPerStep": 0}}, None, id="at-the-minimum"),
    pytest.param(
        {"actuation": {"tokenSecret": {"name": "agent-token"}}}, None, id="secret-key-defaulted"
    ),
    pytest.param({"balance": {"tolerance": 0}}, "spec.balance.tolerance", id="below-minimum"),
    pytest.param(
        {"balance": {"maxConnectionsPerStep": 2.5}},
        "spec.balance.maxConnectionsPerStep",
        id="fraction-for-integer",
    ),
    pytest.param(
        {"metrics": {"maxStalenessSeconds": "60"}},
        "spec.metrics.maxStalenessSeconds",
        id="string-for-number",
    ),
    pytest.param({"dryRun": "false"}, "spec.dryRun", id="string-for-boolean"),
    pytest.param({"paused": 1}, "spec.paused", id="number-for-boolean"),
    pytest.param(
        {"balance": {"tolerance": 0.1, "targetTolerance": 0.5}},
        "spec.balance.targetTolerance",
        id="target-above-tolerance",
    ),
    pytest.param({"metrics": {"preset": "custom"}}, "spec.metrics.query", id="custom-no-query"),
    pytest.param({"metrics": {"query": "up"}}, "spec.metrics.query", id="query-without-custom"),
    pytest.param(
        {"actuation": {"windowSeconds": 100, "deadlineSeconds": 50}},
        "spec.actuation.deadlineSeconds",
        id="deadline-before-window",
    ),
    pytest.param(
        {"metrics": {"prometheus": {"insecureSkipVerify": True, "caFile": "/ca.pem"}}},
        "spec.metrics.prometheus.insecureSkipVerify",
        id="skip-tls-with-ca-file",
    ),
    pytest.param(
        {"metrics": {"prometheus": {"insecureSkipVerify": True, "caSecret": {"name": "ca"}}}},
        "spec.metrics.prometheus.insecureSkipVerify",
        id="skip-tls-with-ca-secret",
    ),
    pytest.param(
        {"metrics": {"prometheus": {"headers": {"X Bad": "1"}}}},
        "spec.metrics.prometheus.headers",
        id="bad-header-name",
    ),
    pytest.param(
        {"workloadRef": {"kind": "DaemonSet", "name": "x"}},
        "spec.workloadRef.kind",
        id="unsupported-workload",
    ),
    pytest.param({"workloadRef": {"kind": "Deployment"}}, "spec.workloadRef.name", id="no-name"),
    pytest.param(
        {"metrics": {"prometheus": {"bearerTokenSecret": {"key": "t"}}}},
        "spec.metrics.prometheus.bearerTokenSecret.name",
        id="secret-without-name",
    ),
    pytest.param(
        {"actuation": {"method": "http", "agent": "node", "tokenSecret": {"name": "t"}}},
        "spec.actuation.method",
        id="http-to-the-node-agent",
    ),
    pytest.param({"actuation": {"agent": "node"}}, None, id="node-agent-by-annotation"),
    pytest.param(
        {"metrics": {"prometheus": {"bearerTokenSecret": {"name": "t", "key": ""}}}},
        "spec.metrics.prometheus.bearerTokenSecret.key",
        id="secret-empty-key",
    ),
    pytest.param(
        {"metrics": {"prometheus": {"caSecret": {"name": ""}}}},
        "spec.metrics.prometheus.caSecret.name",
        id="ca-secret-empty-name",
    ),
    pytest.param(
        {"metrics": {"prometheus": {"caSecret": {"name": "ca", "key": 3}}}},
        "spec.metrics.prometheus.caSecret.key",
        id="ca-secret-number-key",
    ),
    pytest.param(
        {"actuation": {"tokenSecret": {"key": "token"}}},
        "spec.actuation.tokenSecret.name",
        id="token-secret-without-name",
    ),
    pytest.param(
        {"actuation": {"tokenSecret": {"name": "t", "key": ""}}},
        "spec.actuation.tokenSecret.key",
        id="token-secret-empty-key",
    ),
    pytest.param(
        {
            "actuation": {
                "method": "http",
                "agentScheme": "https",
                "tokenSecret": {"name": "t"},
                "caSecret": {"name": "ca"},
                "agentServerName": "agent.connbalance.local",
            }
        },
        None,
        id="https-to-the-agent",
    ),
    pytest.param(
        {"actuation": {"agentScheme": "https"}},
        "spec.actuation.agentScheme",
        id="https-by-annotation",
    ),
    pytest.param(
        {"actuation": {"method": "http", "agentServerName": "agent.connbalance.local"}},
        "spec.actuation.agentServerName",
        id="server-name-without-https",
    ),
    pytest.param(
        {"actuation": {"method": "http", "caSecret": {"name": "ca"}}},
        "spec.actuation.caSecret",
        id="agent-ca-without-https",
    ),
    pytest.param(
        {"actuation": {"method": "http", "agentScheme": "https", "caSecret": {"key": "ca.crt"}}},
        "spec.actuation.caSecret.name",
        id="agent-ca-without-name",
    ),
    pytest.param(
        {
            "actuation": {
                "method": "http",
                "agentScheme": "https",
                "caSecret": {"name": "ca", "key": ""},
            }
        },
        "spec.actuation.caSecret.key",
        id="agent-ca-empty-key",
    ),
    pytest.param({"surprise": True}, "spec.surprise", id="unknown-top-level"),
    pytest.param({"balance": {"tolerence": 0.2}}, "spec.balance.tolerence", id="typo-nested"),
    pytest.param({"selector": None}, "spec.selector", id="no-selector"),
    pytest.param({"selector": {"matchLabels": {}}}, "spec.selector.matchLabels", id="no-labels"),
    pytest.param({"selector": {"app": "auth"}}, "spec.selector", id="selector-without-match"),
]


@pytest.fixture(scope="module")
def custom_objects(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    cluster.run_kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    cluster.run_kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}"
    )
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    yield client.CustomObjectsApi(api)
    api.close()


def python_verdict(spec: dict[str, Any]) -> str | None:
    try:
        Policy.from_spec(spec)
    except PolicyError as exc:
        return exc.field
    return None


def dry_run(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> Any:
    """A server-side dry-run create: the object as it would be stored, or the ApiException."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConnectionBalancer",
        "metadata": {"name": "agreement"},
        "spec": spec,
    }
    try:
        return api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        return exc


def server_verdict(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> list[str]:
    """The fields the API server names in refusing a dry-run create; empty when it accepts.
    Each one it names is also in the message a person sees (kubectl prints the message)."""
    refusal = dry_run(api, namespace, spec)
    if not isinstance(refusal, ApiException):
        return []
    assert refusal.status in (400, 422), refusal.body
    status = json.loads(refusal.body)
    message = status.get("message", "")
    causes = [c["field"] for c in status.get("details", {}).get("causes", []) if "field" in c]
    unknown = re.findall(r'unknown field "([^"]+)"', message)
    fields = causes + unknown
    assert fields, f"the API server named no field: {message}"
    for field in fields:
        assert field in message, f"the message does not name {field}: {message}"
    return fields


def same_field(python: str, server: str) -> bool:
    """One names the field, the other may name a key inside it (a header, a map entry)."""
    return python == server or python.startswith(server + ".") or server.startswith(python + ".")


@pytest.mark.parametrize(("overlay", "field"), HANDWRITTEN + PER_SETTING)
def test_python_and_the_api_server_give_the_same_verdict(
    custom_objects, namespace, overlay, field
):
    spec = {key: value for key, value in {**BASE, **overlay}.items() if value is not None}
    python = python_verdict(spec)
    server = server_verdict(custom_objects, namespace, spec)
    if field is None:
        assert python is None, f"Python refused a spec the case expects accepted: {python}"
        assert server == [], f"the API server refused it: {server}"
        return
    assert python is not None, "Python accepted a spec the case expects refused"
    assert same_field(python, field), python
    assert any(same_field(python, named) for named in server), (python, server)


REFUSED = [case for case in HANDWRITTEN + PER_SETTING if case.values[1] is not None]


def test_there_are_at_least_25_refused_cases_and_every_field_of_the_spec_is_among_them():
    """Every leaf of the CRD's spec schema (each setting of the declaration, each key of the
    structured fields: selector, workloadRef, the Secret references) is the field of at least
    one refused case, or a key inside it."""
    from connbalance.kube.crd import spec_schema

    leaves: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if not node.get("properties"):
            leaves.append(path)

    walk(spec_schema(), "spec")
    refused = {case.values[1] for case in REFUSED}
    assert len(REFUSED) >= 25
    missing = [leaf for leaf in leaves if not any(f == leaf or f.startswith(leaf + ".")
                                                  for f in refused)]  # fmt: skip
    assert missing == [], f"no refused case for {missing}"
    assert {"spec." + s.path for s in FIELDS} <= refused


DEFAULTED = [
    pytest.param({"workloadRef": {"name": "auth"}}, ("workloadRef", "kind"), "Deployment",
                 id="workload-kind"),
    pytest.param({"actuation": {"tokenSecret": {"name": "agent-token"}}},
                 ("actuation", "tokenSecret", "key"), "token", id="token-secret-key"),
    pytest.param({"metrics": {"prometheus": {"caSecret": {"name": "ca"}}}},
                 ("metrics", "prometheus", "caSecret", "key"), "token", id="ca-secret-key"),
    pytest.param({"actuation": {"method": "http", "agentScheme": "https",
                                "caSecret": {"name": "ca"}}},
                 ("actuation", "caSecret", "key"), "token", id="agent-ca-secret-key"),
]  # fmt: skip


@pytest.mark.parametrize(("overlay", "path", "default"), DEFAULTED)
def test_a_field_left_out_comes_back_with_its_default(custom_objects, namespace, overlay, path,
                                                      default):  # fmt: skip
    stored = dry_run(custom_objects, namespace, {**BASE, **overlay})
    assert not isinstance(stored, ApiException), stored
    node: Any = stored["spec"]
    for key in path:
        node = node[key]
    assert node == default
