"""What to count per pod: the presets, each a PromQL template, and how a template is filled in.

A template names the pool with placeholders, never with text pasted in by hand:

``$matchers``
    the label matchers of the pool, for use inside braces: ``namespace="teleport",pod=~"a|b"``
    when the pods are known (the operator, or ``plan`` with a kubeconfig), or the namespace plus
    the pod selector as metric labels when they are not (see ``Pool``).
``$namespace``
    the namespace, escaped for use inside a double-quoted string: ``namespace="$namespace"``.
``$pods``
    the pod names as an anchored alternation, for ``pod=~"$pods"`` (``.+`` when unknown).
``$pod_label``
    the label that names the pod (``metrics.podLabel``, ``pod`` by default).

Values are escaped for PromQL string literals and RE2, and label names are checked, so a
namespace or a selector value can never break out of its string and widen the query.

Each preset also has a timestamp query: the time of the oldest raw sample behind each pod's figure.
An instant query stamps every result with the evaluation time, so without it a sample that stopped
moving (a federated or remote-written series, explicit timestamps) would look fresh for the whole
five-minute lookback. ``custom`` queries have none, and their freshness is the evaluation time.
A read sends both as one instant query (``Queries.combined``), so a tick costs one query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from connbalance.model import PodName
from connbalance.prometheus import promql

CONNECTED_RESOURCES: Final = "teleport_connected_resources"
OPEN_FDS_METRIC: Final = "process_open_fds"


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    counts: str
    query: str | None
    timestamps: str | None
    # The metrics behind the figure, in the order the query tries them: a pod's figure is the
    # first one it exports, summed over its series. Empty for custom. (The simulator's direct
    # scrape computes the same figure from these without a Prometheus.)
    metrics: tuple[str, ...] = ()


TELEPORT_AUTH: Final = Preset(
    name="teleport-auth",
    counts=(
        "Per Teleport auth pod, the resources (SSH nodes, apps, databases, Kubernetes clusters, "
        "desktop services) whose agents hold their inventory control stream to that pod: "
        "teleport_connected_resources{type=node|app|db|db_service|kube|windows_desktop_service}, "
        "summed over type. Each such agent keeps one long-lived gRPC connection to the auth pod "
        "it landed on, so this is the skew that connbalance corrects. The auth service registers "
        "every type's gauge when it starts (at 0), so an auth pod has the series even when idle; "
        "pods that lack it "
        "(a Teleport too old for it, or another server) fall back to process_open_fds, which "
        "counts every open descriptor and so overstates idle pods by a constant. Scraped from "
        "the diag port (3000, /metrics) that the teleport-cluster chart opens with "
        "--diag-addr and its podMonitor."
    ),
    query=(
        f"sum by ($pod_label) ({CONNECTED_RESOURCES}{{$matchers}})"
        f" or sum by ($pod_label) ({OPEN_FDS_METRIC}{{$matchers}})"
    ),
    timestamps=(
        f"min by ($pod_label) (timestamp({CONNECTED_RESOURCES}{{$matchers}}))"
        f" or min by ($pod_label) (timestamp({OPEN_FDS_METRIC}{{$matchers}}))"
    ),
    metrics=(CONNECTED_RESOURCES, OPEN_FDS_METRIC),
)

OPEN_FDS: Final = Preset(
    name="open-fds",
    counts=(
        "Per pod, the open file descriptors of its processes (process_open_fds, exported by every "
        "Prometheus client library), summed over the pod's containers. Works for any server "
        "without a connection metric: each client connection is one descriptor, and the rest "
        "(listeners, files, a sidecar's own descriptors) is a near-constant baseline per pod, "
        "which makes the measured skew a little smaller than the real one."
    ),
    query=f"sum by ($pod_label) ({OPEN_FDS_METRIC}{{$matchers}})",
    timestamps=f"min by ($pod_label) (timestamp({OPEN_FDS_METRIC}{{$matchers}}))",
    metrics=(OPEN_FDS_METRIC,),
)

CUSTOM: Final = Preset(
    name="custom",
    counts=(
        "Whatever metrics.query returns: any PromQL giving one series per pod, named by the pod "
        "label, with a value that grows with the pod's client connections. Use the placeholders "
        "$matchers, $namespace, $pods and $pod_label to select the pool, e.g. "
        'sum by (pod) (grpc_server_active_streams{$matchers}).'
    ),
    query=None,
    timestamps=None,
)

PRESETS: Final = {p.name: p for p in (TELEPORT_AUTH, OPEN_FDS, CUSTOM)}

_PLACEHOLDER = re.compile(r"\$(matchers|namespace|pods|pod_label)\b")


@dataclass(frozen=True, slots=True)
class Pool:
    """Which series belong to the pool.

    With ``pods`` the pool is exactly those pod names in ``namespace``: the robust form, since it
    needs no pod label on the metrics. Without, the pod ``selector`` is matched against metric
    labels named as Prometheus's ``labelmap`` convention names them (``app.kubernetes.io/component``
    becomes ``app_kubernetes_io_component``), which the scrape configuration must provide.
    """

    namespace: str
    selector: tuple[tuple[str, str], ...] = ()
    pods: tuple[PodName, ...] = ()


# The label that tells a timestamp series from a value series in the one query a read sends.
PART_LABEL: Final = "connbalance_part"
TIMESTAMP_PART: Final = "timestamp"


@dataclass(frozen=True, slots=True)
class Queries:
    value: str
    timestamps: str | None

    @property
    def combined(self) -> str:
        """Both in one instant query: the value series, and the timestamp series marked with
        ``PART_LABEL``, whose label sets then never match a value series', so ``or`` keeps
        every series of both sides."""
        if self.timestamps is None:
            return self.value
        marked = f'label_replace({self.timestamps}, "{PART_LABEL}", "{TIMESTAMP_PART}", "", "")'
        return f"({self.value}) or {marked}"


def render(*, preset: str, query: str | None, pool: Pool, pod_label: str) -> Queries:
    """The queries of ``preset`` (``query`` for custom) over ``pool``; ValueError if unusable."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    if chosen.query is None:
        if not query or not query.strip():
            raise ValueError("preset custom needs a query")
        template, stamps = query, None
    else:
        if query:
            raise ValueError(f"a query is only used with preset custom (preset is {preset})")
        template, stamps = chosen.query, chosen.timestamps
    values = _placeholders(pool=pool, pod_label=promql.label_name(pod_label, what="pod label"))

    def fill(template: str) -> str:
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)

    return Queries(value=fill(template), timestamps=fill(stamps) if stamps else None)


def _placeholders(*, pool: Pool, pod_label: str) -> dict[str, str]:
    if not pool.namespace:
        raise ValueError("the namespace must not be empty")
    matchers = [promql.equal("namespace", pool.namespace)]
    if pool.pods:
        matchers.append(promql.one_of(pod_label, pool.pods))
    else:
        matchers += [promql.equal(promql.sanitized_label_name(k), v) for k, v in pool.selector]
    pods = "|".join(promql.regex_literal(p) for p in sorted(set(pool.pods))) or ".+"
    return {
        "matchers": promql.join(matchers),
        "namespace": _unquoted(pool.namespace),
        "pods": _unquoted(pods),
        "pod_label": pod_label,
    }


def _unquoted(value: str) -> str:
    return promql.string_literal(value)[1:-1]


def describe(names: Sequence[str] = tuple(PRESETS)) -> str:
    """A paragraph per preset, for ``--help`` and the docs."""
    return "\n".join(f"{PRESETS[n].name}: {PRESETS[n].counts}" for n in names)
