"""Escaping, judged by Prometheus's own parser: any text quoted by ``string_literal`` comes back
unchanged, and ``regex_literal`` matches exactly the text it was made from."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connbalance.model import PodName
from connbalance.prometheus import Pool, render
from connbalance.prometheus.promql import regex_literal, sanitized_label_name, string_literal
from tests.prometheus.harness import PrometheusServer

pytestmark = pytest.mark.prometheus

# Label values are UTF-8 text; surrogates cannot be sent.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def evaluate(server: PrometheusServer, promql: str) -> list[dict[str, object]]:
    url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            result: list[dict[str, object]] = json.load(answer)["data"]["result"]
            return result
    except urllib.error.HTTPError as e:
        raise AssertionError(f"Prometheus refused {promql!r}: {e.read()!r}") from e


def with_label(value: str) -> str:
    # label_replace expands $1-style references in its replacement: $$ is a literal dollar.
    return f'label_replace(vector(1), "v", {string_literal(value.replace("$", "$$"))}, "", "")'


@EXAMPLES
@given(value=TEXT)
def test_a_quoted_value_reaches_prometheus_unchanged(
    prometheus: PrometheusServer, value: str
) -> None:
    [series] = evaluate(prometheus, with_label(value))
    assert series["metric"] == {"v": value}


@EXAMPLES
@given(value=TEXT, other=TEXT)
def test_an_escaped_regex_matches_exactly_its_own_text(
    prometheus: PrometheusServer, value: str, other: str
) -> None:
    pattern = string_literal(regex_literal(value))
    for candidate, matches in ((value, True), (other, other == value), (value + "x", False)):
        # label_replace writes m="yes" only when the (anchored) regex matches label v.
        [series] = evaluate(prometheus, f'label_replace({with_label(candidate)}, "m", "yes", '
                                        f'"v", {pattern})')
        assert (series["metric"].get("m") == "yes") is matches  # type: ignore[attr-defined]


def test_kubernetes_label_keys_become_the_labels_labelmap_makes() -> None:
    assert sanitized_label_name("app.kubernetes.io/component") == "app_kubernetes_io_component"
    assert sanitized_label_name("app") == "app"


def test_the_presets_select_by_namespace_and_pod_names() -> None:
    queries = render(preset="open-fds", query=None, pod_label="pod",
                     pool=Pool(namespace="teleport", pods=(PodName("b-1"), PodName("a.0"))))
    assert queries.value == (
        'sum by (pod) (process_open_fds{namespace="teleport",pod=~"a\\\\.0|b-1"})')
    assert queries.timestamps == (
        'min by (pod) (timestamp(process_open_fds{namespace="teleport",pod=~"a\\\\.0|b-1"}))')


@pytest.mark.parametrize(
    ("preset", "query", "pod_label", "complaint"),
    [
        ("busiest", None, "pod", "unknown preset"),
        ("custom", None, "pod", "needs a query"),
        ("custom", "  ", "pod", "needs a query"),
        ("open-fds", "up", "pod", "only used with preset custom"),
        ("open-fds", None, "pod name", "not a valid Prometheus label name"),
    ],
)
def test_an_unusable_preset_query_or_label_is_refused(
    preset: str, query: str | None, pod_label: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        render(preset=preset, query=query, pod_label=pod_label, pool=Pool(namespace="ns"))
