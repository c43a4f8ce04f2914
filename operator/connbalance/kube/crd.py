"""The ConnectionBalancer CustomResourceDefinition, generated from the policy table.

The schema carries every default and bound of ``connbalance.model.settings.FIELDS``, and its CEL
rules are rendered from the same module's ``RULES``, so the API server rejects a bad value with a
message naming its field before the operator ever sees it, and ``kubectl get -o yaml`` shows the
defaults in force. ``manifests/crd.yaml`` and the chart's copy are
written by ``python -m connbalance.kube.crd`` and checked against it by the tests.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from connbalance.model.settings import (
    DEFAULT_SECRET_KEY,
    FIELDS,
    HEADER_NAME_PATTERN,
    RULES,
    WORKLOAD_KINDS,
    Setting,
)

GROUP = "connbalance.io"
VERSION = "v1alpha1"
KIND = "ConnectionBalancer"
PLURAL = "connectionbalancers"
SINGULAR = "connectionbalancer"
SHORT_NAMES = ["cbal"]

_DESCRIPTION = "Keeps long-lived client connections evenly spread over the pods it selects."
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}


def _secret_ref(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "The Secret's name."},
            "key": {
                "type": "string",
                "minLength": 1,
                "default": DEFAULT_SECRET_KEY,
                "description": "The key within the Secret.",
            },
        },
    }


_STRUCTURED: dict[str, dict[str, Any]] = {
    "selector": {
        "type": "object",
        "description": "The labels of the pool's pods.",
        "required": ["matchLabels"],
        "properties": {"matchLabels": {**_STRING_MAP, "minProperties": 1}},
    },
    "workloadRef": {
        "type": "object",
        "description": "The Deployment or StatefulSet whose rollouts trigger rebalancing.",
        "required": ["name"],
        "properties": {
            "kind": {
                "type": "string",
                "enum": list(WORKLOAD_KINDS),
                "default": WORKLOAD_KINDS[0],
            },
            "name": {"type": "string", "minLength": 1},
        },
    },
    "metrics.prometheus.headers": {
        **_STRING_MAP,
        "description": "Extra request headers, such as X-Scope-OrgID.",
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(name, name.matches('{HEADER_NAME_PATTERN}'))",
                "message": "header names are letters, digits and dashes",
            }
        ],
    },
    "metrics.prometheus.bearerTokenSecret": _secret_ref("A Secret holding a bearer token."),
    "metrics.prometheus.caSecret": _secret_ref("A Secret holding the CA bundle."),
    "actuation.tokenSecret": _secret_ref("A Secret holding the agent's token (method http)."),
    "actuation.caSecret": _secret_ref(
        "A Secret holding the PEM CA bundle that the agent's certificate is verified with "
        "(agentScheme https); unset, the system CAs."
    ),
}

def _rules_by_scope() -> dict[str, list[dict[str, str]]]:
    """The CEL rules of each object, with the field each one names, as the API server reports."""
    scopes: dict[str, list[dict[str, str]]] = {}
    for rule in RULES:
        scopes.setdefault(rule.scope, []).append(
            {
                "rule": rule.cel(),
                "message": f"{rule.field} {rule.message}",
                "fieldPath": f".{rule.field}",
            }
        )
    return scopes


def _scalar_schema(setting: Setting) -> dict[str, Any]:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}[setting.kind]
    schema: dict[str, Any] = {"type": kind, "description": setting.help}
    if setting.default is not None:
        schema["default"] = setting.default
    if setting.minimum is not None:
        schema["minimum"] = setting.minimum
    if setting.maximum is not None:
        schema["maximum"] = setting.maximum
    if setting.choices:
        schema["enum"] = list(setting.choices)
    if setting.kind is str and not setting.choices:
        schema["minLength"] = 1
    fractional = _fractional_bounds(setting)
    if fractional:
        schema["x-kubernetes-validations"] = fractional
    return schema


def _fractional_bounds(setting: Setting) -> list[dict[str, str]]:
    """CEL for bounds that are not whole numbers. The API server compares a whole-number value
    with ``minimum`` truncated to an integer, so ``tolerance: 0`` would pass ``minimum: 0.01``;
    CEL sees every ``number`` as a double and compares exactly."""
    rules = []
    if setting.minimum is not None and not float(setting.minimum).is_integer():
        rules.append({"rule": f"self >= {setting.minimum!r}",
                      "message": f"must be at least {setting.minimum:g}"})
    if setting.maximum is not None and not float(setting.maximum).is_integer():
        rules.append({"rule": f"self <= {setting.maximum!r}",
                      "message": f"must be at most {setting.maximum:g}"})
    return rules


def spec_schema() -> dict[str, Any]:
    root: dict[str, Any] = {"type": "object", "properties": {}}

    def place(path: str, schema: dict[str, Any]) -> None:
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node["properties"].setdefault(
                part, {"type": "object", "properties": {}, "default": {}}
            )
        node["properties"][leaf] = schema

    for setting in FIELDS:
        place(setting.path, _scalar_schema(setting))
    for path, schema in _STRUCTURED.items():
        place(path, schema)
    for path, rules in _rules_by_scope().items():
        _node(root, path)["x-kubernetes-validations"] = rules
    for child in root["properties"].values():
        _complete_default(child)
    root["required"] = ["selector"]
    return root


def _node(root: dict[str, Any], path: str) -> dict[str, Any]:
    node = root
    for part in path.split("."):
        node = node["properties"][part]
    return node


def _complete_default(node: dict[str, Any]) -> Any:
    """An object's default holds its children's defaults: the API server checks an object's
    validation rules against its default as written, before defaulting inside it."""
    if node.get("type") != "object" or "properties" not in node:
        return node.get("default")
    filled = {key: _complete_default(child) for key, child in node["properties"].items()}
    if "default" in node:
        node["default"] = {key: value for key, value in filled.items() if value is not None}
    return node.get("default")


def status_schema() -> dict[str, Any]:
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string"},
            "skew": {"type": "number"},
            "podCount": {"type": "integer"},
            "lastAction": {"type": "string"},
            "reason": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "conditions": {"type": "array", "items": condition},
            "pods": {
                "type": "array",
                "items": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {
                        "name": {"type": "string"},
                        "ready": {"type": "boolean"},
                        "load": {"type": "number"},
                        "target": {"type": "number"},
                        "lastDrain": {"type": "string"},
                    },
                },
            },
        },
    }


def build_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Skew", "type": "number", "jsonPath": ".status.skew"},
        {"name": "Pods", "type": "integer", "jsonPath": ".status.podCount"},
        {"name": "Last Action", "type": "string", "jsonPath": ".status.lastAction"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "listKind": f"{KIND}List",
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _DESCRIPTION,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    header = (
        "# Generated by `python -m connbalance.kube.crd` from connbalance.model.policy. "
        "Do not edit.\n"
    )
    return header + yaml.dump(build_crd(), Dumper=_PlainDumper, sort_keys=False, width=100)


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values out in full: anchors and aliases only puzzle a reader of the CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
