"""JSON schemas of Kubernetes types, derived from the kubernetes Python client's models.

Each model names its fields (``attribute_map``: Python name to JSON key), their types
(``openapi_types``: ``str``, ``List[V1Toleration]``, ``Dict[str, str]``, another model...) and,
through pydantic, which are required. That is the OpenAPI definition the client was generated
from, so a typo anywhere inside a securityContext or an affinity is refused like one at the top.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes.client import models

# The client types quantities as strings; a user writes `cpu: 1` as readily as `cpu: "1"`.
_QUANTITY_MAPS = {("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests")}
_QUANTITY: dict[str, Any] = {"type": ["string", "number"]}
_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},
}
_LIST = re.compile(r"^List\[(?P<item>.+)\]$")
_DICT = re.compile(r"^Dict\[str, (?P<value>.+)\]$")


def definitions(*roots: str) -> dict[str, Any]:
    """The schema of each named model and of every model it reaches, by model name."""
    found: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name], reached = _model_schema(name)
        todo.extend(reached)
    return dict(sorted(found.items()))


def _model_schema(name: str) -> tuple[dict[str, Any], list[str]]:
    model = getattr(models, name)
    reached: list[str] = []
    properties: dict[str, Any] = {}
    for attribute, kind in model.openapi_types.items():
        key = model.attribute_map[attribute]
        if (name, key) in _QUANTITY_MAPS:
            properties[key] = {"type": "object", "additionalProperties": _QUANTITY}
        else:
            properties[key] = _type_schema(kind, reached)
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    required = [
        model.attribute_map[attribute]
        for attribute, info in model.model_fields.items()
        if attribute in model.attribute_map and info.is_required()
    ]
    if required:
        schema["required"] = required
    return schema, reached


def _type_schema(kind: str, reached: list[str]) -> dict[str, Any]:
    if kind in _SCALARS:
        return dict(_SCALARS[kind])
    if match := _LIST.match(kind):
        return {"type": "array", "items": _type_schema(match.group("item"), reached)}
    if match := _DICT.match(kind):
        return {
            "type": "object",
            "additionalProperties": _type_schema(match.group("value"), reached),
        }
    if not hasattr(models, kind):
        raise ValueError(f"unknown type in the kubernetes client's models: {kind!r}")
    reached.append(kind)
    return {"$ref": f"#/definitions/{kind}"}
