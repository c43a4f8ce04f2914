"""The policy: the validated ``spec`` of a ConnectionBalancer.

What each setting is, and every default and bound, is declared once in
``connbalance.model.settings``; ``Policy.from_spec`` checks a spec against that declaration
after filling in its defaults, as the API server does with the CRD generated from it, so both
reject the same values and name the same field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from connbalance.model.settings import (
    DEFAULT_SECRET_KEY,
    FIELDS,
    HEADER_NAME_PATTERN,
    RULES,
    STRUCTURED,
    SUPERSEDED,
    WORKLOAD_KINDS,
    Setting,
)


class PolicyError(ValueError):
    """A spec that cannot be used. ``field`` is the dotted path, e.g. ``spec.balance.tolerance``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    kind: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSpec:
    preset: str
    query: str | None
    pod_label: str
    max_staleness_seconds: float
    url: str | None  # None: the operator's default
    bearer_token_file: str | None
    bearer_token_secret: SecretKeyRef | None
    ca_file: str | None
    ca_secret: SecretKeyRef | None
    insecure_skip_verify: bool
    timeout_seconds: float
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceSpec:
    tolerance: float
    target_tolerance: float
    max_fraction_per_step: float
    max_connections_per_step: int
    max_pool_fraction_per_step: float
    min_connections: int
    settle_seconds: float
    step_interval_seconds: float
    balanced_interval_seconds: float
    max_steps: int
    max_steps_without_improvement: int
    mode: str

    @property
    def recheck_seconds(self) -> float:
        """How long a pool found balanced, or judged and left alone, sleeps before it is
        measured again: a balanced pool costs a PromQL query per look, and any change to it
        wakes its loop anyway."""
        return max(self.step_interval_seconds, self.balanced_interval_seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActuationSpec:
    method: str
    window_seconds: float
    quiet_millis: int
    deadline_seconds: float
    steering: str  # agent, readinessGate or none: the old boolean steer already read into it
    agent_port: int
    agent_scheme: str  # http or https, toward the agent's port (method http)
    agent_server_name: str | None  # None: the agent's certificate names the pod's IP
    agent: str
    server_port: int
    token_secret: SecretKeyRef | None
    ca_secret: SecretKeyRef | None  # None: the agent's certificate is checked by system CAs

    @property
    def steer(self) -> bool:
        """Reconnects are kept off shedding pods (by the agent or by the readiness gate)."""
        return self.steering != "none"

    @property
    def agent_steers(self) -> bool:
        """The agent itself refuses new connections for the window (the request's steer)."""
        return self.steering == "agent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    selector: tuple[tuple[str, str], ...]
    workload_ref: WorkloadRef | None
    metrics: MetricsSpec
    balance: BalanceSpec
    actuation: ActuationSpec
    dry_run: bool
    paused: bool

    @classmethod
    def from_spec(cls, spec: object, *, prefix: str = "spec") -> Policy:
        """Validate a ConnectionBalancer ``spec``. Raises PolicyError naming the first bad field."""
        return _parse(spec, prefix)


def _parse(spec: object, prefix: str) -> Policy:
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise PolicyError(prefix, "must be an object")
    _reject_unknown(spec, prefix)
    values: dict[str, Any] = {s.path: _scalar(spec, s, prefix) for s in FIELDS}
    values.update(_structured(spec, prefix))
    _check_rules(values, prefix)
    for rule in SUPERSEDED:
        values[f"{rule.scope}.{rule.field}"] = rule.resolve(_scoped(values, rule.scope))
    return _build(values)


def _structured(spec: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The object-valued settings, each parsed by the reader of its shape."""
    prom = "metrics.prometheus"
    return {
        "selector": _selector(spec.get("selector"), f"{prefix}.selector"),
        "workloadRef": _workload(spec.get("workloadRef"), f"{prefix}.workloadRef"),
        f"{prom}.headers": _headers(_get(spec, f"{prom}.headers"), f"{prefix}.{prom}.headers"),
        f"{prom}.bearerTokenSecret": _secret(
            _get(spec, f"{prom}.bearerTokenSecret"), f"{prefix}.{prom}.bearerTokenSecret"
        ),
        f"{prom}.caSecret": _secret(_get(spec, f"{prom}.caSecret"), f"{prefix}.{prom}.caSecret"),
        "actuation.tokenSecret": _secret(
            _get(spec, "actuation.tokenSecret"), f"{prefix}.actuation.tokenSecret"
        ),
        "actuation.caSecret": _secret(
            _get(spec, "actuation.caSecret"), f"{prefix}.actuation.caSecret"
        ),
    }


def _check_rules(values: Mapping[str, Any], prefix: str) -> None:
    for rule in RULES:
        if not rule.holds(_scoped(values, rule.scope)):
            raise PolicyError(f"{prefix}.{rule.scope}.{rule.field}", rule.message)


def _scoped(values: Mapping[str, Any], scope: str) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        return values.get(f"{scope}.{name}")

    return get


def _build(values: Mapping[str, Any]) -> Policy:
    groups: dict[str, dict[str, Any]] = {"metrics": {}, "balance": {}, "actuation": {}, "": {}}
    replaced = {f"{rule.scope}.{rule.old}" for rule in SUPERSEDED}
    for setting in FIELDS:
        if setting.path not in replaced:  # read into the setting that replaces it
            groups[setting.group][setting.attribute] = values[setting.path]
    prom = "metrics.prometheus"
    return Policy(
        selector=values["selector"],
        workload_ref=values["workloadRef"],
        metrics=MetricsSpec(
            **groups["metrics"],
            headers=values[f"{prom}.headers"],
            bearer_token_secret=values[f"{prom}.bearerTokenSecret"],
            ca_secret=values[f"{prom}.caSecret"],
        ),
        balance=BalanceSpec(**groups["balance"]),
        actuation=ActuationSpec(
            **groups["actuation"],
            token_secret=values["actuation.tokenSecret"],
            ca_secret=values["actuation.caSecret"],
        ),
        **groups[""],
    )


def _get(spec: Mapping[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _scalar(spec: Mapping[str, Any], setting: Setting, prefix: str) -> Any:
    name = f"{prefix}.{setting.path}"
    value = _get(spec, setting.path)
    if value is None:
        return setting.default
    if setting.kind is bool:
        if not isinstance(value, bool):
            raise PolicyError(name, f"must be true or false, not {value!r}")
        return value
    if setting.kind is str:
        if not isinstance(value, str) or not value:
            raise PolicyError(name, f"must be a non-empty string, not {value!r}")
        if setting.choices and value not in setting.choices:
            raise PolicyError(name, f"must be one of {', '.join(setting.choices)}, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(name, f"must be a number, not {value!r}")
    if setting.kind is int and value != int(value):
        raise PolicyError(name, f"must be a whole number, not {value!r}")
    if not math.isfinite(value):
        raise PolicyError(name, "must be finite")
    if setting.minimum is not None and value < setting.minimum:
        raise PolicyError(name, f"must be at least {setting.minimum:g}, not {value:g}")
    if setting.maximum is not None and value > setting.maximum:
        raise PolicyError(name, f"must be at most {setting.maximum:g}, not {value:g}")
    return setting.kind(value)


def _known_paths() -> set[str]:
    paths = {s.path for s in FIELDS} | STRUCTURED
    return paths | {p.rsplit(".", i)[0] for p in paths for i in range(1, p.count(".") + 1)}


def _reject_unknown(spec: Mapping[str, Any], prefix: str) -> None:
    known = _known_paths()

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if full not in known:
                raise PolicyError(f"{prefix}.{full}", "unknown field")
            if full not in STRUCTURED and isinstance(value, Mapping):
                walk(value, full)

    walk(spec, "")


def _string_map(value: object, name: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError(name, "must be a map of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise PolicyError(f"{name}.{key}", "must be a string")
    return tuple(sorted(value.items()))


def _selector(value: object, name: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        raise PolicyError(name, "required: the labels of the pool's pods, under matchLabels")
    if not isinstance(value, Mapping):
        raise PolicyError(name, "must be an object with matchLabels")
    if set(value) - {"matchLabels"}:
        extra = sorted(set(value) - {"matchLabels"})[0]
        raise PolicyError(f"{name}.{extra}", "unknown field: only matchLabels is supported")
    if "matchLabels" not in value:
        raise PolicyError(f"{name}.matchLabels", "required: the labels of the pool's pods")
    labels = _string_map(value["matchLabels"], f"{name}.matchLabels")
    if not labels:
        raise PolicyError(f"{name}.matchLabels", "must hold at least one label")
    return labels


_HEADER_NAME: Final = re.compile(HEADER_NAME_PATTERN)


def _headers(value: object, name: str) -> tuple[tuple[str, str], ...]:
    headers = _string_map(value, f"{name}.headers")
    for key, _ in headers:
        if not _HEADER_NAME.match(key):
            raise PolicyError(f"{name}.headers.{key}", "is not a valid header name")
    return headers


def _secret(value: object, name: str) -> SecretKeyRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"name", "key"}:
        raise PolicyError(name, "must be {name: <secret>, key: <key>}")
    secret, key = value.get("name"), value.get("key", DEFAULT_SECRET_KEY)
    if not isinstance(secret, str) or not secret:
        raise PolicyError(f"{name}.name", "required: the Secret's name")
    if not isinstance(key, str) or not key:
        raise PolicyError(f"{name}.key", "must be a non-empty string")
    return SecretKeyRef(name=secret, key=key)


def _workload(value: object, name: str) -> WorkloadRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"kind", "name"}:
        raise PolicyError(name, "must be {kind: Deployment|StatefulSet, name: <name>}")
    kind, workload = value.get("kind", "Deployment"), value.get("name")
    if kind not in WORKLOAD_KINDS:
        raise PolicyError(f"{name}.kind", f"must be one of {', '.join(WORKLOAD_KINDS)}")
    if not isinstance(workload, str) or not workload:
        raise PolicyError(f"{name}.name", "required")
    return WorkloadRef(kind=str(kind), name=workload)
