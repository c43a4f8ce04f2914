"""The policy: the ``spec`` of a ConnectionBalancer, with every default and bound in one place.

``FIELDS`` is the single table of scalar settings. ``Policy.from_spec`` validates against it and
the CRD's OpenAPI schema is generated from it, so the API server and the CLI reject the same
values with the same field names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

PRESETS: Final = ("teleport-auth", "open-fds", "custom")
MODES: Final = ("postRollout", "continuous")
METHODS: Final = ("annotation", "http")
WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet")


class PolicyError(ValueError):
    """A spec that cannot be used. ``field`` is the dotted path, e.g. ``spec.balance.tolerance``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Setting:
    """One scalar of the spec: where it lives, its type, default and bounds, and what it means."""

    path: str
    kind: type[float] | type[int] | type[bool] | type[str]
    default: float | int | bool | str | None
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


FIELDS: Final[tuple[Setting, ...]] = (
    Setting("metrics.preset", str, "teleport-auth", "What to count per pod.", choices=PRESETS),
    Setting("metrics.query", str, None, "PromQL returning one series per pod (preset custom)."),
    Setting("metrics.podLabel", str, "pod", "The label that names the pod in each series."),
    Setting(
        "metrics.maxStalenessSeconds",
        float,
        60.0,
        "Older samples are not acted on.",
        minimum=1,
        maximum=3600,
    ),
    Setting(
        "metrics.prometheus.url",
        str,
        "http://prometheus-server.monitoring.svc:80",
        "Prometheus base URL.",
    ),
    Setting("metrics.prometheus.bearerTokenFile", str, None, "File holding a bearer token."),
    Setting("metrics.prometheus.caFile", str, None, "CA bundle to verify Prometheus with."),
    Setting(
        "metrics.prometheus.insecureSkipVerify",
        bool,
        False,
        "Skip TLS verification (never in production).",
    ),
    Setting(
        "metrics.prometheus.timeoutSeconds", float, 10.0, "Query timeout.", minimum=0.1, maximum=300
    ),
    Setting(
        "balance.tolerance",
        float,
        0.10,
        "Act when max/mean exceeds 1 + tolerance.",
        minimum=0.01,
        maximum=10,
    ),
    Setting(
        "balance.targetTolerance",
        float,
        0.05,
        "Once acting, go on until max/mean is within 1 + targetTolerance (hysteresis).",
        minimum=0.0,
        maximum=10,
    ),
    Setting(
        "balance.maxFractionPerStep",
        float,
        0.25,
        "At most this share of a pod's load is cycled in one step.",
        minimum=0.0,
        maximum=1,
    ),
    Setting(
        "balance.maxConnectionsPerStep",
        int,
        1000,
        "At most this many connections of one pod are cycled in one step.",
        minimum=0,
        maximum=1_000_000,
    ),
    Setting(
        "balance.maxPoolFractionPerStep",
        float,
        0.25,
        "At most this share of the pool's total load is cycled in one step.",
        minimum=0.0,
        maximum=1,
    ),
    Setting(
        "balance.minConnections",
        int,
        10,
        "Pools with fewer connections in total are left alone.",
        minimum=0,
        maximum=10**9,
    ),
    Setting(
        "balance.settleSeconds",
        float,
        30.0,
        "Every pod must have been Ready this long, and the rollout complete.",
        minimum=0,
        maximum=86400,
    ),
    Setting(
        "balance.stepIntervalSeconds",
        float,
        30.0,
        "Least time between steps, after the drain window, so a fresh scrape is measured.",
        minimum=1,
        maximum=86400,
    ),
    Setting(
        "balance.maxSteps",
        int,
        20,
        "Steps per rebalancing episode before giving up.",
        minimum=1,
        maximum=1000,
    ),
    Setting(
        "balance.maxStepsWithoutImprovement",
        int,
        2,
        "Stop with Converging=False after this many steps that did not lower skew.",
        minimum=1,
        maximum=100,
    ),
    Setting(
        "balance.mode",
        str,
        "postRollout",
        "postRollout: act once the pool changed and settled; continuous: whenever skewed.",
        choices=MODES,
    ),
    Setting(
        "actuation.method",
        str,
        "annotation",
        "annotation: write the request to the pod; http: also POST it to the agent.",
        choices=METHODS,
    ),
    Setting(
        "actuation.windowSeconds",
        float,
        30.0,
        "Closes are spread over this window with jitter.",
        minimum=0,
        maximum=3600,
    ),
    Setting(
        "actuation.quietMillis",
        int,
        200,
        "A connection is closed once quiet this long (proxy mode).",
        minimum=0,
        maximum=60000,
    ),
    Setting(
        "actuation.deadlineSeconds",
        float,
        90.0,
        "After this, chosen connections are closed even if busy.",
        minimum=1,
        maximum=7200,
    ),
    Setting(
        "actuation.steer",
        bool,
        True,
        "Keep reconnects off shedding pods for the window (the agent refuses new connections "
        "there, in proxy mode), so each cycled connection moves once. Where nothing steers, "
        "steps under-shed and take longer, but never overshoot.",
    ),
    Setting(
        "actuation.agentPort",
        int,
        9095,
        "The agent's HTTP port (method http).",
        minimum=1,
        maximum=65535,
    ),
    Setting("dryRun", bool, False, "Plan and report, but cycle nothing."),
    Setting("paused", bool, False, "Do nothing until unpaused."),
)


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    preset: str = "teleport-auth"
    query: str | None = None
    pod_label: str = "pod"
    max_staleness_seconds: float = 60.0
    url: str = "http://prometheus-server.monitoring.svc:80"
    bearer_token_file: str | None = None
    bearer_token_secret: SecretKeyRef | None = None
    ca_file: str | None = None
    ca_secret: SecretKeyRef | None = None
    insecure_skip_verify: bool = False
    timeout_seconds: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BalanceSpec:
    tolerance: float = 0.10
    target_tolerance: float = 0.05
    max_fraction_per_step: float = 0.25
    max_connections_per_step: int = 1000
    max_pool_fraction_per_step: float = 0.25
    min_connections: int = 10
    settle_seconds: float = 30.0
    step_interval_seconds: float = 30.0
    max_steps: int = 20
    max_steps_without_improvement: int = 2
    mode: str = "postRollout"


@dataclass(frozen=True, slots=True)
class ActuationSpec:
    method: str = "annotation"
    window_seconds: float = 30.0
    quiet_millis: int = 200
    deadline_seconds: float = 90.0
    steer: bool = True
    agent_port: int = 9095
    token_secret: SecretKeyRef | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    selector: tuple[tuple[str, str], ...] = ()
    workload_ref: WorkloadRef | None = None
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    balance: BalanceSpec = field(default_factory=BalanceSpec)
    actuation: ActuationSpec = field(default_factory=ActuationSpec)
    dry_run: bool = False
    paused: bool = False

    @classmethod
    def from_spec(cls, spec: object, *, prefix: str = "spec") -> Policy:
        """Validate a ConnectionBalancer ``spec``. Raises PolicyError naming the first bad field."""
        return _parse(spec, prefix)


_PYTHON_NAMES: Final = {
    "metrics.podLabel": "pod_label",
    "metrics.maxStalenessSeconds": "max_staleness_seconds",
    "metrics.prometheus.url": "url",
    "metrics.prometheus.bearerTokenFile": "bearer_token_file",
    "metrics.prometheus.caFile": "ca_file",
    "metrics.prometheus.insecureSkipVerify": "insecure_skip_verify",
    "metrics.prometheus.timeoutSeconds": "timeout_seconds",
    "dryRun": "dry_run",
}
_STRUCTURED: Final = {
    "selector",
    "workloadRef",
    "metrics.prometheus.headers",
    "metrics.prometheus.bearerTokenSecret",
    "metrics.prometheus.caSecret",
    "actuation.tokenSecret",
}


def python_name(path: str) -> str:
    """The dataclass attribute for a dotted spec path: ``balance.maxSteps`` -> ``max_steps``."""
    if path in _PYTHON_NAMES:
        return _PYTHON_NAMES[path]
    leaf = path.rsplit(".", 1)[-1]
    return "".join("_" + c.lower() if c.isupper() else c for c in leaf)


def _parse(spec: object, prefix: str) -> Policy:
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise PolicyError(prefix, "must be an object")
    _reject_unknown(spec, prefix)
    values = {s.path: _scalar(spec, s, prefix) for s in FIELDS}
    groups: dict[str, dict[str, Any]] = {"metrics": {}, "balance": {}, "actuation": {}, "": {}}
    for path, value in values.items():
        group = path.split(".", 1)[0] if "." in path else ""
        groups[group][python_name(path)] = value
    prom = _get(spec, "metrics.prometheus") or {}
    groups["metrics"]["headers"] = _headers(prom.get("headers"), f"{prefix}.metrics.prometheus")
    groups["metrics"]["bearer_token_secret"] = _secret(
        prom.get("bearerTokenSecret"), f"{prefix}.metrics.prometheus.bearerTokenSecret"
    )
    groups["metrics"]["ca_secret"] = _secret(
        prom.get("caSecret"), f"{prefix}.metrics.prometheus.caSecret"
    )
    actuation = _get(spec, "actuation") or {}
    groups["actuation"]["token_secret"] = _secret(
        actuation.get("tokenSecret"), f"{prefix}.actuation.tokenSecret"
    )
    policy = Policy(
        selector=_selector(spec.get("selector"), f"{prefix}.selector"),
        workload_ref=_workload(spec.get("workloadRef"), f"{prefix}.workloadRef"),
        metrics=MetricsSpec(**groups["metrics"]),
        balance=BalanceSpec(**groups["balance"]),
        actuation=ActuationSpec(**groups["actuation"]),
        dry_run=groups[""]["dry_run"],
        paused=groups[""]["paused"],
    )
    _check_together(policy, prefix)
    return policy


def _check_together(policy: Policy, prefix: str) -> None:
    metrics, balance, actuation = policy.metrics, policy.balance, policy.actuation
    if metrics.preset == "custom" and not metrics.query:
        raise PolicyError(f"{prefix}.metrics.query", "required when preset is custom")
    if metrics.preset != "custom" and metrics.query:
        raise PolicyError(
            f"{prefix}.metrics.query", f"only used with preset custom (preset is {metrics.preset})"
        )
    if balance.target_tolerance > balance.tolerance:
        raise PolicyError(
            f"{prefix}.balance.targetTolerance",
            f"must not exceed tolerance ({balance.tolerance:g})",
        )
    if actuation.deadline_seconds < actuation.window_seconds:
        raise PolicyError(
            f"{prefix}.actuation.deadlineSeconds",
            f"must be at least windowSeconds ({actuation.window_seconds:g})",
        )
    if metrics.insecure_skip_verify and (metrics.ca_file or metrics.ca_secret):
        raise PolicyError(
            f"{prefix}.metrics.prometheus.insecureSkipVerify", "cannot be combined with a CA bundle"
        )
    if not policy.selector:
        raise PolicyError(f"{prefix}.selector", "required: the labels of the pool's pods")


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
    paths = {s.path for s in FIELDS} | _STRUCTURED
    return paths | {p.rsplit(".", i)[0] for p in paths for i in range(1, p.count(".") + 1)}


def _reject_unknown(spec: Mapping[str, Any], prefix: str) -> None:
    known = _known_paths()

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if full not in known:
                raise PolicyError(f"{prefix}.{full}", "unknown field")
            if full not in _STRUCTURED and isinstance(value, Mapping):
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
    if isinstance(value, Mapping) and "matchLabels" in value:
        if set(value) != {"matchLabels"}:
            raise PolicyError(name, "only matchLabels is supported")
        return _string_map(value["matchLabels"], f"{name}.matchLabels")
    return _string_map(value, name)


def _headers(value: object, name: str) -> tuple[tuple[str, str], ...]:
    headers = _string_map(value, f"{name}.headers")
    for key, _ in headers:
        if not key.replace("-", "").isalnum():
            raise PolicyError(f"{name}.headers.{key}", "is not a valid header name")
    return headers


def _secret(value: object, name: str) -> SecretKeyRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"name", "key"}:
        raise PolicyError(name, "must be {name: <secret>, key: <key>}")
    secret, key = value.get("name"), value.get("key", "token")
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
