"""The one declaration of the ConnectionBalancer spec: every setting and every cross-field rule.

Each ``Setting`` holds a scalar's path, type, default, bounds and meaning; each rule holds a
relation between fields of one object. From these alone come the Python validation
(``connbalance.model.policy``), the CRD's OpenAPI schema and its CEL rules
(``connbalance.kube.crd``), and the defaults of a drain request (``connbalance.model.drain``)
and of the agent. A value's default or bound is written here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

PRESETS: Final = ("teleport-auth", "open-fds", "custom")
MODES: Final = ("postRollout", "continuous")
METHODS: Final = ("annotation", "http")
# How the operator speaks to a sidecar's HTTP endpoint (method http): https keeps the bearer
# token off the pod network in the clear.
AGENT_SCHEMES: Final = ("http", "https")
AGENTS: Final = ("sidecar", "node")
# How reconnects are kept off a shedding pod for its window: its agent refuses them, or the pod
# leaves its Services' endpoints (a readiness-gate condition set False), or nothing steers.
STEERINGS: Final = ("agent", "readinessGate", "none")
STEERING_DEFAULT: Final = "agent"
# The pod condition that steering by readinessGate sets False for a shedding pod's window.
ACCEPTING_CONDITION: Final = "connbalance.io/accepting"
WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet")
DEFAULT_SECRET_KEY: Final = "token"
# An HTTP header name as the spec accepts it; CEL's matches() and Python's re read it alike.
HEADER_NAME_PATTERN: Final = "^[A-Za-z0-9-]+$"

Scalar = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Setting:
    """One scalar of the spec: where it lives, its type, default and bounds, and what it means."""

    path: str
    kind: type[float] | type[int] | type[bool] | type[str]
    default: Scalar | None
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def attribute(self) -> str:
        """The Python attribute: the leaf of the path in snake case (``maxSteps``: max_steps)."""
        leaf = self.path.rsplit(".", 1)[-1]
        return "".join("_" + c.lower() if c.isupper() else c for c in leaf)

    @property
    def group(self) -> str:
        """The top-level object it belongs to (``balance``), or "" for ``dryRun`` and ``paused``."""
        return self.path.split(".", 1)[0] if "." in self.path else ""

    def number_default(self) -> float:
        if isinstance(self.default, bool) or not isinstance(self.default, int | float):
            raise TypeError(f"{self.path} has no numeric default")
        return float(self.default)

    def upper_bound(self) -> float:
        if self.maximum is None:
            raise TypeError(f"{self.path} has no maximum")
        return self.maximum


def _number(
    path: str, kind: type[float] | type[int], default: float, low: float, high: float, text: str
) -> Setting:
    return Setting(path, kind, default, text, minimum=low, maximum=high)


FIELDS: Final[tuple[Setting, ...]] = (
    Setting("metrics.preset", str, "teleport-auth", "What to count per pod.", choices=PRESETS),
    Setting("metrics.query", str, None, "PromQL returning one series per pod (preset custom)."),
    Setting("metrics.podLabel", str, "pod", "The label that names the pod in each series."),
    _number("metrics.maxStalenessSeconds", float, 60.0, 1, 3600,
            "Older samples are not acted on; a pod missing from an answer after a good "
            "reading is a scrape gap, waited for this long without a word."),
    Setting("metrics.prometheus.url", str, None,
            "Prometheus base URL; unset, the operator's --default-prometheus-url."),
    Setting("metrics.prometheus.bearerTokenFile", str, None, "File holding a bearer token."),
    Setting("metrics.prometheus.caFile", str, None, "CA bundle to verify Prometheus with."),
    Setting("metrics.prometheus.insecureSkipVerify", bool, False,
            "Skip TLS verification (never in production)."),
    _number("metrics.prometheus.timeoutSeconds", float, 10.0, 0.1, 300, "Query timeout."),
    _number("balance.tolerance", float, 0.10, 0.01, 10,
            "Act when max/mean exceeds 1 + tolerance."),
    _number("balance.targetTolerance", float, 0.05, 0.0, 10,
            "Once acting, go on until max/mean is within 1 + targetTolerance (hysteresis)."),
    _number("balance.maxFractionPerStep", float, 0.25, 0.0, 1,
            "At most this share of a pod's load is cycled in one step."),
    _number("balance.maxConnectionsPerStep", int, 1000, 0, 1_000_000,
            "At most this many connections of one pod are cycled in one step."),
    _number("balance.maxPoolFractionPerStep", float, 0.25, 0.0, 1,
            "At most this share of the pool's total load is cycled in one step."),
    _number("balance.minConnections", int, 10, 0, 10**9,
            "Pools with fewer connections in total are left alone."),
    _number("balance.settleSeconds", float, 30.0, 0, 86400,
            "Every pod must have been Ready this long, and the rollout complete."),
    _number("balance.stepIntervalSeconds", float, 30.0, 1, 86400,
            "Least time between steps, after the drain window, so a fresh scrape is measured."),
    _number("balance.balancedIntervalSeconds", float, 60.0, 1, 86400,
            "How often a balanced (or judged) pool is measured again, never more often than "
            "stepIntervalSeconds; a pod or workload change wakes it at once."),
    _number("balance.maxSteps", int, 20, 1, 1000,
            "Steps per rebalancing episode before giving up."),
    _number("balance.maxStepsWithoutImprovement", int, 2, 1, 100,
            "Stop with Converging=False after this many steps that did not lower skew."),
    Setting("balance.mode", str, "postRollout",
            "postRollout: act once the pool changed and settled; continuous: whenever skewed.",
            choices=MODES),
    Setting("actuation.method", str, "annotation",
            "annotation: write the request to the pod; http: also POST it to the agent.",
            choices=METHODS),
    _number("actuation.windowSeconds", float, 30.0, 0, 3600,
            "Closes are spread over this window with jitter."),
    _number("actuation.quietMillis", int, 200, 0, 60000,
            "A connection is closed once quiet this long (proxy mode)."),
    _number("actuation.deadlineSeconds", float, 90.0, 1, 7200,
            "After this, chosen connections are closed even if busy."),
    # No schema default: with one, the API server would fill in steering beside an old steer.
    Setting("actuation.steering", str, None,
            "How reconnects are kept off shedding pods for the window, so each cycled connection "
            "moves once: agent, the pod's agent refuses new connections (at its listener in "
            "proxy mode, by a self-expiring nftables rule in reset mode); readinessGate, the "
            f"operator sets the pod condition {ACCEPTING_CONDITION} False, so the pod leaves "
            "its Services' endpoints (needs that readiness gate in the pod spec); none, nothing "
            "steers: steps under-shed and take longer, but never overshoot. Unset: what steer "
            f"says if given (true: agent, false: none), else {STEERING_DEFAULT}.",
            choices=STEERINGS),
    Setting("actuation.steer", bool, None,
            "Deprecated: use steering. Still read, as steering agent (true) or none (false); "
            "given beside steering, the two must agree."),
    _number("actuation.agentPort", int, 9095, 1, 65535, "The agent's HTTP port (method http)."),
    Setting("actuation.agentScheme", str, "http",
            "How the operator reaches the agent's port (method http): http, or https, the "
            "agent serving --tls-cert-file and --tls-key-file and its certificate verified "
            "against caSecret (unset: the system CAs).",
            choices=AGENT_SCHEMES),
    Setting("actuation.agentServerName", str, None,
            "The name the agent's certificate must carry (agentScheme https); the operator "
            "still connects to the pod's IP. Unset: the certificate must carry the pod's IP, "
            "which changes with every pod, so a fixed DNS name in the certificate (such as "
            "agent.connbalance.local) named here is the practical setup."),
    Setting("actuation.agent", str, "sidecar",
            "Who acts on the requests: sidecar, the agent in each pod; node, the node agent "
            "(a DaemonSet) in the pod's network namespace. Each acts only when named here.",
            choices=AGENTS),
    _number("actuation.serverPort", int, 3025, 1, 65535,
            "The server port whose connections the node agent cycles and steers (agent node; "
            "a sidecar takes --port). 3025 is Teleport auth's."),
    Setting("dryRun", bool, False, "Plan and report, but cycle nothing."),
    Setting("paused", bool, False, "Do nothing until unpaused."),
)

# The settings that are objects, not scalars; their shapes are checked where they are parsed.
STRUCTURED: Final = frozenset(
    {
        "selector",
        "workloadRef",
        "metrics.prometheus.headers",
        "metrics.prometheus.bearerTokenSecret",
        "metrics.prometheus.caSecret",
        "actuation.tokenSecret",
        "actuation.caSecret",
    }
)

_BY_PATH: Final = {s.path: s for s in FIELDS}


def setting(path: str) -> Setting:
    """The declared setting at a dotted path, such as ``actuation.windowSeconds``."""
    return _BY_PATH[path]


Lookup = Callable[[str], Any]


class Rule(Protocol):
    """A relation between fields of one object (``scope``); ``field`` is the one it names."""

    @property
    def scope(self) -> str: ...

    @property
    def field(self) -> str: ...

    @property
    def message(self) -> str: ...

    def holds(self, get: Lookup) -> bool:
        """``get(name)`` is a field of the scope after defaulting, None when absent."""
        ...

    def cel(self) -> str: ...


@dataclass(frozen=True, slots=True)
class NotAbove:
    scope: str
    field: str
    bound: str

    @property
    def message(self) -> str:
        return f"must not exceed {self.bound}"

    def holds(self, get: Lookup) -> bool:
        return bool(get(self.field) <= get(self.bound))

    def cel(self) -> str:
        return f"self.{self.field} <= self.{self.bound}"


@dataclass(frozen=True, slots=True)
class NotBelow:
    scope: str
    field: str
    bound: str

    @property
    def message(self) -> str:
        return f"must be at least {self.bound}"

    def holds(self, get: Lookup) -> bool:
        return bool(get(self.field) >= get(self.bound))

    def cel(self) -> str:
        return f"self.{self.field} >= self.{self.bound}"


@dataclass(frozen=True, slots=True)
class RequiredWhen:
    scope: str
    field: str
    other: str
    value: str

    @property
    def message(self) -> str:
        return f"required when {self.other} is {self.value}"

    def holds(self, get: Lookup) -> bool:
        return get(self.other) != self.value or get(self.field) is not None

    def cel(self) -> str:
        return f"self.{self.other} != '{self.value}' || has(self.{self.field})"


@dataclass(frozen=True, slots=True)
class OnlyWhen:
    scope: str
    field: str
    other: str
    value: str

    @property
    def message(self) -> str:
        return f"only used when {self.other} is {self.value}"

    def holds(self, get: Lookup) -> bool:
        return get(self.other) == self.value or get(self.field) is None

    def cel(self) -> str:
        return f"self.{self.other} == '{self.value}' || !has(self.{self.field})"


@dataclass(frozen=True, slots=True)
class ExcludesWhenTrue:
    """A true boolean ``field`` may not stand beside any of ``others``."""

    scope: str
    field: str
    others: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"cannot be true together with {' or '.join(self.others)}"

    def holds(self, get: Lookup) -> bool:
        return not get(self.field) or all(get(other) is None for other in self.others)

    def cel(self) -> str:
        absent = " && ".join(f"!has(self.{other})" for other in self.others)
        return f"!self.{self.field} || ({absent})"


@dataclass(frozen=True, slots=True)
class NotTogether:
    """``field`` may not have ``value`` while ``other`` has ``other_value``."""

    scope: str
    field: str
    value: str
    other: str
    other_value: str

    @property
    def message(self) -> str:
        return f"cannot be {self.value} when {self.other} is {self.other_value}"

    def holds(self, get: Lookup) -> bool:
        return not (get(self.field) == self.value and get(self.other) == self.other_value)

    def cel(self) -> str:
        mine = f"self.{self.field} == '{self.value}'"
        theirs = f"self.{self.other} == '{self.other_value}'"
        return f"!({mine} && {theirs})"


@dataclass(frozen=True, slots=True)
class ValueOnlyWhen(NotTogether):
    """``field`` may have ``value`` only while ``other`` has ``other_value`` (the same fields as
    ``NotTogether``, the other way round): a choice added to ``other`` later is refused too, not
    let through."""

    @property
    def message(self) -> str:
        return f"can be {self.value} only when {self.other} is {self.other_value}"

    def holds(self, get: Lookup) -> bool:
        return bool(get(self.field) != self.value or get(self.other) == self.other_value)

    def cel(self) -> str:
        return f"self.{self.field} != '{self.value}' || self.{self.other} == '{self.other_value}'"


@dataclass(frozen=True, slots=True)
class Supersedes:
    """``field`` (a choice) replaces the boolean ``old``, still read so that objects stored
    before the change keep working: true reads as ``when_true``, false as ``when_false``, and
    with neither given the value is ``default``. Given both, they must agree: false with
    ``when_false`` only, true with any other choice (each of them does what true did)."""

    scope: str
    field: str
    old: str
    when_true: str
    when_false: str
    default: str

    @property
    def message(self) -> str:
        return (
            f"disagrees with {self.old}, which is deprecated ({self.old} true reads as "
            f"{self.when_true}, false as {self.when_false}): remove {self.old}"
        )

    def holds(self, get: Lookup) -> bool:
        old, new = get(self.old), get(self.field)
        return old is None or new is None or (new == self.when_false) == (not old)

    def cel(self) -> str:
        return (
            f"!has(self.{self.old}) || !has(self.{self.field}) || "
            f"((self.{self.field} == '{self.when_false}') == !self.{self.old})"
        )

    def resolve(self, get: Lookup) -> str:
        """The value in force: ``field`` if given, else what ``old`` says, else the default."""
        new, old = get(self.field), get(self.old)
        if new is not None:
            return str(new)
        if old is not None:
            return self.when_true if old else self.when_false
        return self.default


SUPERSEDED: Final[tuple[Supersedes, ...]] = (
    Supersedes("actuation", "steering", old="steer", when_true="agent", when_false="none",
               default=STEERING_DEFAULT),
)

RULES: Final[tuple[Rule, ...]] = (
    *SUPERSEDED,
    RequiredWhen("metrics", "query", other="preset", value="custom"),
    OnlyWhen("metrics", "query", other="preset", value="custom"),
    NotAbove("balance", "targetTolerance", bound="tolerance"),
    NotBelow("actuation", "deadlineSeconds", bound="windowSeconds"),
    # The node agent takes requests from the pod's annotation only: it has no HTTP intake.
    NotTogether("actuation", "method", value="http", other="agent", other_value="node"),
    ExcludesWhenTrue("metrics.prometheus", "insecureSkipVerify", others=("caFile", "caSecret")),
    # Only the sidecar's HTTP endpoint is reached over TLS; an annotation has no transport.
    ValueOnlyWhen("actuation", "agentScheme", value="https", other="method", other_value="http"),
    OnlyWhen("actuation", "agentServerName", other="agentScheme", value="https"),
    OnlyWhen("actuation", "caSecret", other="agentScheme", value="https"),
)
