"""PrometheusLoadSource against a real Prometheus scraping real exporter processes.

The pools mimic Teleport auth pods: ``teleport_connected_resources{type}`` and
``process_open_fds`` on each pod's own loopback address, pod labels added by relabelling.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from connbalance.model import PodLoad, PodName
from connbalance.ports import (
    MetricsDuplicateSeries,
    MetricsEmpty,
    MetricsHttpError,
    MetricsInvalidValue,
    MetricsNotAVector,
    MetricsPodMissing,
    MetricsStale,
    MetricsUnreachable,
)
from connbalance.prometheus import Connection, PrometheusLoadSource
from tests.prometheus.conftest import Pool, pools
from tests.prometheus.harness import HOST, PrometheusServer

pytestmark = pytest.mark.prometheus

AUTH = (("app.kubernetes.io/component", "auth"), ("app.kubernetes.io/instance", "teleport"))


def source(url: str, namespace: str, **settings: object) -> PrometheusLoadSource:
    timeout = float(settings.pop("timeout", 5.0))  # type: ignore[arg-type]
    return PrometheusLoadSource(
        connection=Connection(url=url, timeout_seconds=timeout),
        namespace=namespace,
        selector=AUTH,
        **settings,  # type: ignore[arg-type]
    )


def read(src: PrometheusLoadSource, pods: Sequence[str] | None) -> Mapping[PodName, PodLoad]:
    if pods is None:
        return asyncio.run(src.read_all())
    return asyncio.run(src.read(pods=[PodName(p) for p in pods]))


def figures(loads: Mapping[PodName, PodLoad]) -> dict[str, float]:
    return {pod: load.load for pod, load in loads.items()}


PROXY = {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/instance": "teleport"}
# Pools that no test changes, set up together (see conftest.pools).
LAYOUT: dict[str, list[dict[str, Any]]] = {
    "fallback": [dict(pod="auth-a", resources={"node": 70}, open_fds=300),
                 dict(pod="auth-old", resources=None, open_fds=33)],
    "sidecar": [dict(pod="auth-a", resources={"node": 70}, open_fds=40),
                dict(pod="auth-a", container="connbalance-agent", resources=None, open_fds=10),
                dict(pod="auth-b", resources={"node": 70}, open_fds=25)],
    # A proxy pod of the same release: no connected resources, so without the selector the
    # open-fds fallback would count it as a member of the pool.
    "with-proxy": [dict(pod="auth-a", resources={"node": 80}, open_fds=300),
                   dict(pod="auth-b", resources={"node": 90}, open_fds=300),
                   dict(pod="proxy-a", labels=PROXY, resources=None, open_fds=900)],
    "regex": [dict(pod="auth-a", resources={"node": 5}, open_fds=10),
              dict(pod="authxb", resources={"node": 7}, open_fds=10)],
    # Explicit sample timestamps two minutes old, as a federated or remote-written series has:
    # still inside Prometheus's five-minute lookback, so the instant query returns them.
    "stale": [dict(pod="auth-a", resources={"node": 50}, open_fds=100),
              dict(pod="auth-b", resources={"node": 50}, open_fds=100, age=120)],
    **{
        name: [dict(pod="auth-a", resources={"node": 50}, open_fds=100),
               dict(pod="auth-b", resources={"node": value}, open_fds=100)]
        for name, value in (("nan", "NaN"), ("inf", "+Inf"), ("negative", -3))
    },
}


@pytest.fixture(scope="module")
def fixed(
    prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Pool]]:
    yield from pools(prometheus, tmp_path_factory.mktemp("fixed-pools"), LAYOUT)


def test_teleport_auth_sums_connected_resources_over_type_per_pod(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    before = time.time()
    loads = read(source(prometheus.url, auth_pool.namespace), ["auth-a", "auth-b", "auth-c"])
    assert figures(loads) == {"auth-a": 120, "auth-b": 118, "auth-c": 2}
    # Stamped with the raw samples' scrape time, not the query's evaluation time.
    for load in loads.values():
        assert before - 5 < load.timestamp <= time.time()


def test_teleport_auth_falls_back_to_open_fds_for_a_pod_without_the_metric(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    loads = read(source(prometheus.url, fixed["fallback"].namespace), ["auth-a", "auth-old"])
    assert figures(loads) == {"auth-a": 70, "auth-old": 33}


def test_open_fds_sums_the_containers_of_a_pod(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    src = source(prometheus.url, fixed["sidecar"].namespace, preset="open-fds")
    loads = read(src, ["auth-a", "auth-b"])
    assert figures(loads) == {"auth-a": 50, "auth-b": 25}


def test_named_pods_are_selected_by_name_and_others_are_left_out(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    src = source(prometheus.url, auth_pool.namespace)
    assert 'pod=~"auth-a|auth-c"' in src.queries(pods=[PodName("auth-c"), PodName("auth-a")]).value
    assert figures(read(src, ["auth-a", "auth-c"])) == {"auth-a": 120, "auth-c": 2}


def test_without_pod_names_the_selector_is_matched_against_relabelled_pod_labels(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    assert figures(read(source(prometheus.url, fixed["with-proxy"].namespace), None)) == {
        "auth-a": 80, "auth-b": 90}


def test_custom_query_fills_in_the_placeholders(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    src = source(prometheus.url, auth_pool.namespace, preset="custom",
                 query='sum by ($pod_label) (teleport_connected_resources{$matchers,type="node"})')
    assert figures(read(src, ["auth-a", "auth-b", "auth-c"])) == {
        "auth-a": 60, "auth-b": 100, "auth-c": 2}
    by_namespace = source(
        prometheus.url, auth_pool.namespace, preset="custom",
        query='sum by (pod) (teleport_connected_resources{namespace="$namespace",pod=~"$pods"})')
    assert figures(read(by_namespace, ["auth-b"])) == {"auth-b": 118}


def test_the_pod_label_can_be_another_label(prometheus: PrometheusServer, auth_pool: Pool) -> None:
    src = source(prometheus.url, auth_pool.namespace, pod_label="kubernetes_pod_name")
    assert figures(read(src, ["auth-a", "auth-c"])) == {"auth-a": 120, "auth-c": 2}


def test_a_regex_character_in_a_pod_name_matches_only_itself(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    with pytest.raises(MetricsPodMissing, match=r"no series for pod auth\.b \(it has auth-a\)"):
        read(source(prometheus.url, fixed["regex"].namespace), ["auth-a", "auth.b"])


@pytest.mark.parametrize(
    "namespace",
    ['x"} or vector(1) or up{a="', "x\\", 'a",namespace=~".+', "line\nbreak"],
    ids=["quote-injection", "backslash", "matcher-injection", "newline"],
)
def test_a_hostile_namespace_stays_inside_its_string(
    prometheus: PrometheusServer, auth_pool: Pool, namespace: str
) -> None:
    # Valid PromQL (no HTTP 400) that selects nothing: the value never widened the query.
    with pytest.raises(MetricsEmpty):
        read(source(prometheus.url, namespace), ["auth-a"])
    with pytest.raises(MetricsEmpty):
        read(source(prometheus.url, namespace), None)


def test_a_hostile_selector_value_stays_inside_its_string(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    src = PrometheusLoadSource(
        connection=Connection(url=prometheus.url), namespace=auth_pool.namespace,
        selector=(("app.kubernetes.io/component", 'auth",app_kubernetes_io_component=~".*'),))
    with pytest.raises(MetricsEmpty):
        read(src, None)


def test_a_selector_key_that_cannot_become_a_label_is_refused() -> None:
    with pytest.raises(ValueError, match="selector key"):
        PrometheusLoadSource(connection=Connection(url="http://127.0.5.1:1"), namespace="ns",
                             selector=(("9lives", "x"),))


# Every bad answer is a named error whose message says where and what.


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_prometheus_is_reported_with_its_url() -> None:
    url = f"http://{HOST}:{closed_port()}"
    with pytest.raises(MetricsUnreachable, match="Connection refused") as caught:
        read(source(url, "ns"), ["auth-a"])
    assert url in str(caught.value)
    assert caught.value.reason == "PrometheusUnreachable"


def test_a_prometheus_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(8)
        url = f"http://{HOST}:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(MetricsUnreachable, match=r"did not answer within 0\.5s") as caught:
            read(source(url, "ns", timeout=0.5), ["auth-a"])
        assert time.monotonic() - started < 5
    assert url in str(caught.value)


def test_an_http_error_carries_prometheus_own_message(prometheus: PrometheusServer) -> None:
    src = source(prometheus.url, "ns", preset="custom", query="sum by (pod) (")
    with pytest.raises(MetricsHttpError, match=r"HTTP 400: bad_data: .*parse error") as caught:
        read(src, ["auth-a"])
    assert prometheus.url in str(caught.value)
    assert caught.value.reason == "PrometheusHTTPError"


def test_an_empty_result_is_an_error_naming_the_query(prometheus: PrometheusServer) -> None:
    with pytest.raises(MetricsEmpty, match='namespace="nobody-here"') as caught:
        read(source(prometheus.url, "nobody-here"), ["auth-a"])
    assert caught.value.reason == "EmptyResult"
    assert prometheus.url in str(caught.value)


def test_a_pod_missing_from_the_result_is_named(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    with pytest.raises(MetricsPodMissing, match="no series for pod auth-d") as caught:
        read(source(prometheus.url, auth_pool.namespace), ["auth-a", "auth-b", "auth-c", "auth-d"])
    assert caught.value.reason == "PodMissing"


def test_a_pod_whose_exporter_went_away_goes_missing(
    prometheus: PrometheusServer, pool: Pool
) -> None:
    pool.add("auth-a", resources={"node": 50}, open_fds=100)
    gone = pool.add("auth-b", resources={"node": 50}, open_fds=100)
    pool.publish()
    gone.stop()
    # The failed scrape writes staleness markers: the series leaves instant queries at once.
    pool.scraped("teleport_connected_resources", lambda seen: "auth-b" not in seen)
    with pytest.raises(MetricsPodMissing, match="no series for pod auth-b"):
        read(source(prometheus.url, pool.namespace), ["auth-a", "auth-b"])


def test_two_series_for_one_pod_are_refused(prometheus: PrometheusServer, auth_pool: Pool) -> None:
    # A custom query that forgot to aggregate over type.
    src = source(prometheus.url, auth_pool.namespace, preset="custom",
                 query="teleport_connected_resources{$matchers}")
    with pytest.raises(MetricsDuplicateSeries, match="two series for pod auth-a") as caught:
        read(src, ["auth-a"])
    assert "sum by (pod)" in str(caught.value)
    assert caught.value.reason == "DuplicateSeries"


def test_two_containers_of_one_pod_under_a_raw_query_are_refused(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    src = source(prometheus.url, fixed["sidecar"].namespace, preset="custom",
                 query="process_open_fds{$matchers}")
    with pytest.raises(MetricsDuplicateSeries, match='container="connbalance-agent"'):
        read(src, None)


@pytest.mark.parametrize(
    ("scenario", "shown"), [("nan", "NaN"), ("inf", "+Inf"), ("negative", "-3")]
)
def test_a_value_that_is_not_a_load_is_refused(
    prometheus: PrometheusServer, fixed: dict[str, Pool], scenario: str, shown: str
) -> None:
    with pytest.raises(MetricsInvalidValue, match=f"pod auth-b the value {re.escape(shown)}"):
        read(source(prometheus.url, fixed[scenario].namespace), ["auth-a", "auth-b"])


def test_samples_older_than_max_staleness_are_refused(
    prometheus: PrometheusServer, fixed: dict[str, Pool]
) -> None:
    namespace = fixed["stale"].namespace
    src = source(prometheus.url, namespace, max_staleness_seconds=60)
    with pytest.raises(MetricsStale, match=r"pod auth-b is 1[12]\ds old.*\(60s\)") as caught:
        read(src, ["auth-a", "auth-b"])
    assert caught.value.reason == "StaleSamples"
    relaxed = source(prometheus.url, namespace, max_staleness_seconds=300)
    loads = read(relaxed, ["auth-a", "auth-b"])
    assert 110 < time.time() - loads[PodName("auth-b")].timestamp < 135


def test_staleness_is_judged_by_the_injected_clock(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    late = source(prometheus.url, auth_pool.namespace, max_staleness_seconds=60,
                  clock=lambda: time.time() + 90)
    with pytest.raises(MetricsStale, match=r"is (9\d|1[01]\d)s old"):
        read(late, ["auth-a"])


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("scalar(sum(teleport_connected_resources{$matchers}))", "a scalar"),
        ('"auth-a"', "a string"),
        ("teleport_connected_resources{$matchers}[10s]", "a range vector"),
    ],
    ids=["scalar", "string", "matrix"],
)
def test_a_query_that_is_not_an_instant_vector_is_refused(
    prometheus: PrometheusServer, auth_pool: Pool, query: str, kind: str
) -> None:
    src = source(prometheus.url, auth_pool.namespace, preset="custom", query=query)
    with pytest.raises(MetricsNotAVector, match=kind) as caught:
        read(src, ["auth-a"])
    assert caught.value.reason == "NotAVector"
    assert prometheus.url in str(caught.value)


def test_without_pod_names_every_pod_of_the_pool_is_read(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    loads = read(source(prometheus.url, auth_pool.namespace), None)
    assert set(loads) == {"auth-a", "auth-b", "auth-c"}
    assert all(math.isfinite(load.load) and load.pod == pod for pod, load in loads.items())


def test_reading_no_pods_asks_nothing() -> None:
    unreachable = source(f"http://{HOST}:{closed_port()}", "ns")
    assert read(unreachable, []) == {}
