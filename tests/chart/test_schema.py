"""values.schema.json: generated from values.yaml, and strict at every level a user writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.generate import README, SCHEMA, readme_text, schema_text
from tests.chart.generate import _node as node
from tests.chart.generate import schema as generated_schema
from tests.chart.helmrun import CHART, one
from tests.chart.values_source import SourceError, read

TYPO = "tpyoKey"


def test_the_checked_in_schema_is_the_generated_one():
    assert SCHEMA.read_text() == schema_text(), "run `make chart-docs`"


def test_the_readme_values_table_is_the_generated_one():
    current = README.read_text()
    assert current == readme_text(current), "run `make chart-docs`"


def test_every_value_in_values_yaml_is_described():
    values, documented = read()
    for key in values:
        assert (key,) in documented, key
    described = {doc.dotted for doc in documented.values()}
    assert "examples.teleport.enabled" in described


def test_an_undescribed_value_is_refused_by_the_generator():
    values, documented = read("# -- fine\nfine: 1\nsneaky: 2\n")
    with pytest.raises(SourceError, match="sneaky"):
        node(("sneaky",), values["sneaky"], documented)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> tuple[dict[str, Any], str]:
    for ref_holder in (node, *(node.get("allOf") or [])):
        ref = ref_holder.get("$ref", "")
        if ref:
            name = ref.rsplit("/", 1)[1]
            return definitions[name], name
    return node, ""


def strict_levels() -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each object a user writes that refuses unknown keys, once, with a path that reaches it:
    steps are ("key", name) or ("item", ""). Read from the generated schema, so that a checked-in
    one that lost a level fails its typo test."""
    schema = generated_schema()
    definitions = schema["definitions"]
    seen: set[str] = set()
    queue: list[tuple[tuple[tuple[str, str], ...], dict[str, Any]]] = [((), schema)]
    while queue:
        path, node = queue.pop(0)
        node, name = _resolve(node, definitions)
        if name in seen:
            continue
        if name:
            seen.add(name)
        kind = node.get("type")
        if kind == "object" and node.get("additionalProperties") is False:
            yield _label(path, name), path
            for key, child in node.get("properties", {}).items():
                queue.append(((*path, ("key", key)), child))
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            queue.append(((*path, ("key", "anykey")), node["additionalProperties"]))
        elif kind == "array" and isinstance(node.get("items"), dict):
            queue.append(((*path, ("item", "")), node["items"]))


def _label(path: tuple[tuple[str, str], ...], name: str) -> str:
    dotted = "".join(f".{key}" if step == "key" else "[]" for step, key in path).lstrip(".")
    return f"{dotted or '<top>'}{f' ({name})' if name else ''}"


def values_with_typo(path: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    value: Any = {TYPO: "x"}
    for step, key in reversed(path):
        value = [value] if step == "item" else {key: value}
    return value


LEVELS = list(strict_levels())


def test_the_levels_cover_the_chart_and_the_kubernetes_types():
    labels = " ".join(label for label, _ in LEVELS)
    for expected in [
        "<top>",
        "examples.teleport",
        "metrics.service",
        "agentAccess[]",
        "V1SecurityContext",
        "V1Capabilities",
        "V1ResourceRequirements",
        "V1NodeSelectorRequirement",
        "V1WeightedPodAffinityTerm",
        "V1Toleration",
        "V1PodSecurityContext",
    ]:
        assert expected in labels, expected
    assert len(LEVELS) > 30


@pytest.mark.parametrize(("label", "path"), LEVELS, ids=[label for label, _ in LEVELS])
def test_a_typo_at_each_level_is_refused_by_helm(helm, label, path):
    document = yaml.safe_dump(values_with_typo(path))
    for command in (["lint", "--strict", str(CHART), "-f", "-"],):
        done = helm.run(*command, stdin=document)
        assert done.returncode != 0, f"helm lint took {document}"
        assert TYPO in done.stdout + done.stderr
    done = helm.template(values=document)
    assert done.returncode != 0, f"helm template took {document}"
    assert TYPO in done.stderr


GOOD_KUBERNETES_VALUES = """
securityContext:
  runAsUser: 1000
  capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
  seccompProfile: {type: Localhost, localhostProfile: profiles/operator.json}
podSecurityContext:
  fsGroup: 2000
  sysctls: [{name: net.ipv4.ip_local_port_range, value: "1024 65535"}]
resources:
  requests: {cpu: 1, memory: 100Mi}
  limits: {cpu: "2", memory: 1Gi}
tolerations:
  - {key: dedicated, operator: Equal, value: ops, effect: NoSchedule, tolerationSeconds: 30}
nodeSelector: {kubernetes.io/os: linux}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions: [{key: zone, operator: In, values: [a, b]}]
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector: {matchLabels: {app.kubernetes.io/name: connbalance}}
imagePullSecrets: [{name: regcred}]
"""


def test_well_typed_kubernetes_values_are_taken_and_rendered_as_given(helm):
    docs = helm.render(values=GOOD_KUBERNETES_VALUES)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    given = yaml.safe_load(GOOD_KUBERNETES_VALUES)
    assert pod["affinity"] == given["affinity"]
    assert pod["tolerations"] == given["tolerations"]
    assert pod["containers"][0]["resources"] == given["resources"]
    # Maps merge with the chart's defaults (which stay hardened); lists replace them.
    assert given["securityContext"].items() <= pod["containers"][0]["securityContext"].items()


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ("securityContext: {runAsUser: root}", "runAsUser"),
        ("resources: {requests: {cpu: [1]}}", "cpu"),
        ("tolerations: [{key: a, tolerationSeconds: soon}]", "tolerationSeconds"),
        (
            "affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
            "{nodeSelectorTerms: [{matchExpressions: [{key: zone}]}]}}}",
            "operator",
        ),
        ("nodeSelector: {zone: 1}", "zone"),
        ("replicaCount: -1", "replicaCount"),
        ("logFormat: yaml", "logFormat"),
        ("image: {pullPolicy: Sometimes}", "pullPolicy"),
        ("prometheus: {url: prometheus:9090}", "url"),
        ("watchNamespaces: [a, a]", "watchNamespaces"),
        ("agentAccess: [{namespace: teleport}]", "serviceAccount"),
    ],
)
def test_a_badly_typed_value_is_refused_naming_it(helm, document, named):
    done = helm.template(values=document)
    assert done.returncode != 0, document
    assert named in done.stderr
