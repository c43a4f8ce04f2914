"""The Grafana dashboard asks only for metrics the operator exports.

Every PromQL expression in the dashboard (panel targets and template variables) is read for the
metric names it selects, and each name is looked up among the series the operator's registry
(``connbalance.kube.metrics.REGISTRY``) can export; each label it groups by, matches or shows is
one those metrics carry, or one the scrape adds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart.helmrun import CHART

DASHBOARD = CHART / "dashboards" / "connbalance.json"

# Labels the scrape adds (Kubernetes discovery through a ServiceMonitor or PodMonitor); the
# monitors honour the metrics' own labels, so the operator's `namespace` and `pod` win.
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service",
                           "endpoint"})  # fmt: skip

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "atan2",
    }
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: the identifiers that are not functions,
    keywords, label names, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)  # label lists of by(), on()...
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in _IDENT.finditer(text):
        word, rest = match.group(), text[match.end() :].lstrip()
        before = text[: match.start()]
        if word in _KEYWORDS or rest.startswith("(") or (before and before[-1].isdigit()):
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for each panel target and each query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # Grafana's label_values(metric, label): the metric is PromQL, the label is not.
        found = re.fullmatch(r"label_values\((?P<metric>.+),\s*\w+\)", query.strip())
        yield f"variable {variable['name']!r}", found.group("metric") if found else query


def exported_names() -> set[str]:
    """Every series name the operator's registry can export, as Prometheus sees them."""
    from connbalance.kube.metrics import REGISTRY

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "enum": ("",),
    }
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def used_names() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, list[str]] = {}
    for where, expr in dashboard_queries(dashboard):
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    return used


USED = used_names()


def test_the_query_reader_finds_metric_names_and_nothing_else():
    expr = (
        'sum by (outcome) (increase(connbalance_cycled_connections_total{policy=~"$policy",'
        ' outcome!="x"}[$__rate_interval])) / on (policy) group_left max(up offset 5m) > bool 2'
    )
    assert metric_names(expr) == {"connbalance_cycled_connections_total", "up"}
    assert metric_names("histogram_quantile(0.9, rate(x_bucket[1m]))") == {"x_bucket"}


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for wanted in ["skew", "load per pod", "drains", "cycled connections by outcome", "phase"]:
        assert wanted in titles
    assert {"connbalance_skew", "connbalance_phase"} <= set(USED)


@pytest.mark.parametrize("name", sorted(USED))
def test_each_metric_the_dashboard_queries_is_one_the_operator_exports(name):
    assert name in exported_names(), f"{name} (in {', '.join(USED[name])}) is not exported"


def label_names(expr: str) -> set[str]:
    """The label names an expression groups by or matches on."""
    names = set()
    for group in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        names.update(n.strip() for n in group.group(1).split(",") if n.strip())
    for matchers in re.finditer(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        names.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers.group(1)))
    return names


def metric_labels() -> dict[str, set[str]]:
    """Each exported series name's label names, from the registry's collectors."""
    from connbalance.kube.metrics import REGISTRY

    out: dict[str, set[str]] = {}
    # prometheus_client keeps which collector exports which names, and the labels it was
    # declared with, only in private attributes; the test reads them rather than guess.
    for collector, names in REGISTRY._collector_to_names.items():
        for name in names:
            out[name] = set(getattr(collector, "_labelnames", ()))
    return out


def test_the_label_reader_finds_grouping_and_matcher_labels():
    expr = 'sum by (a, b) (x{c=~"$c", d!="{e=}"}) / on (f) y'
    assert label_names(expr) == {"a", "b", "c", "d", "f"}


def test_each_label_the_dashboard_uses_is_one_its_metrics_carry():
    labels = metric_labels()
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    for target in targets:
        carried = set(SCRAPE_LABELS)
        for name in metric_names(target["expr"]):
            carried |= labels.get(name, set())
        used = label_names(target["expr"]) | set(
            re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"])
        )
        assert used <= carried, f"{target['expr']}: {sorted(used - carried)} on no metric of it"
