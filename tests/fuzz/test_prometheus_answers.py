"""Fuzzing what Prometheus answers, through real HTTP on loopback (``fakeprometheus``).

Random JSON, wrong types, NaN and Inf, duplicate series, huge numbers, empty and stale results,
bodies that are not JSON, HTTP errors: the load source gives a valid reading (every pod asked
for, each a finite load of zero or more, fresh) or raises a ``MetricsError``, never anything
else, and never hands the planner a NaN, an infinite or a negative load.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connbalance.model import PodName
from connbalance.ports import (
    MetricsDuplicateSeries,
    MetricsError,
    MetricsInvalidValue,
    MetricsStale,
)
from connbalance.prometheus import Connection, PrometheusLoadSource
from tests.fuzz.drainwire import FUZZ, json_values
from tests.fuzz.fakeprometheus import FakePrometheus, Reply

NOW = 1_800_000_000.0
PODS = [PodName("auth-0"), PodName("auth-1"), PodName("auth-2")]
MAX_STALENESS = 60.0


@pytest.fixture(scope="module")
def prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.stop()


def source(url: str, preset: str) -> PrometheusLoadSource:
    return PrometheusLoadSource(
        connection=Connection(url=url, timeout_seconds=5.0), namespace="teleport",
        preset=preset, query="sum by (pod) (up{$matchers})" if preset == "custom" else None,
        max_staleness_seconds=MAX_STALENESS, clock=lambda: NOW,
    )  # fmt: skip


def envelope(result: Any, kind: str = "vector") -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": kind, "result": result}}
    ).encode()


number_texts = st.one_of(
    st.floats().map(repr),
    st.sampled_from(
        [
            "NaN",
            "+Inf",
            "-Inf",
            "Inf",
            "nan",
            "1e400",
            "-0",
            "9" * 400,
            "0x10",
            "",
            " 5 ",
            "1_000",
            "١٢",
        ]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=8),
)
stamps = st.one_of(
    st.floats(min_value=NOW - 2 * MAX_STALENESS, max_value=NOW + 5),
    st.floats(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from(["NaN", "1e400", "x"]),
    json_values,
)
pod_names = st.sampled_from([*PODS, "auth-9", ""]) | st.text(max_size=6)
labels = st.one_of(
    st.fixed_dictionaries({"pod": pod_names}, optional={"type": st.sampled_from(["node", "app"])}),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.fixed_dictionaries({"pod": json_values}),
    json_values,
)
items = st.one_of(
    st.fixed_dictionaries({"metric": labels, "value": st.tuples(stamps, number_texts).map(list)}),
    st.fixed_dictionaries({"metric": labels, "values": st.lists(st.tuples(stamps, number_texts))}),
    json_values,
)
results = st.one_of(
    st.lists(items, max_size=6),
    st.tuples(stamps, number_texts).map(list),  # a scalar or a string
    json_values,
)
bodies = st.one_of(
    results.map(envelope),
    st.tuples(results, st.sampled_from(["vector", "matrix", "scalar", "string", 7])).map(
        lambda r: envelope(*r)
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=5_000).map(
        lambda n: b'{"status":"success","data":{"result":' + b"[" * n + b"]" * n + b"}}"
    ),
)
replies = st.builds(
    Reply, st.sampled_from([200, 200, 200, 400, 422, 500, 503]), bodies,
    st.sampled_from(["application/json", "text/plain"]),
)  # fmt: skip


def read(src: PrometheusLoadSource) -> dict[PodName, Any] | MetricsError:
    try:
        return dict(asyncio.run(src.read(pods=PODS)))
    except MetricsError as exc:
        return exc


def check_reading(reading: dict[PodName, Any] | MetricsError) -> None:
    if isinstance(reading, MetricsError):
        assert str(reading), "a MetricsError must say what was wrong"
        return
    assert sorted(reading) == sorted(PODS)
    for pod, load in reading.items():
        assert load.pod == pod
        assert math.isfinite(load.load), load
        assert load.load >= 0, load
        assert math.isfinite(load.timestamp), load
        assert NOW - load.timestamp <= MAX_STALENESS, load


@FUZZ
@given(replies, replies, st.sampled_from(["teleport-auth", "open-fds", "custom"]))
def test_any_answer_is_a_valid_reading_or_a_metrics_error(prometheus, value, stamps_reply, preset):
    prometheus.value, prometheus.timestamps = value, stamps_reply
    check_reading(read(source(prometheus.url, preset)))


def vector(values: dict[str, tuple[Any, str]]) -> bytes:
    return envelope([{"metric": {"pod": p}, "value": [t, v]} for p, (t, v) in values.items()])


@FUZZ
@given(
    st.dictionaries(st.sampled_from(PODS), st.floats(min_value=0, max_value=1e6), min_size=3),
    st.sampled_from(PODS),
    st.sampled_from(["NaN", "+Inf", "-Inf", "-1", "-1e-9", "1e400", "-" + "9" * 400]),
)
def test_one_bad_value_spoils_the_reading_whatever_the_others(prometheus, good, bad_pod, bad):
    prometheus.value = Reply(200, vector({p: (NOW, repr(v)) for p, v in good.items()}
                                         | {bad_pod: (NOW, bad)}))  # fmt: skip
    prometheus.timestamps = Reply(200, vector({p: (NOW, repr(NOW)) for p in PODS}))
    reading = read(source(prometheus.url, "teleport-auth"))
    assert isinstance(reading, MetricsInvalidValue), reading
    assert bad_pod in str(reading)


@FUZZ
@given(
    st.sampled_from(PODS),
    st.one_of(
        st.floats(min_value=NOW - 10 * MAX_STALENESS, max_value=NOW - MAX_STALENESS - 1e-3),
        st.sampled_from([float("nan"), float("-inf"), float("inf"), "NaN", "-Inf", "+Inf"]),
    ),
)
def test_a_stale_or_timeless_sample_spoils_the_reading(prometheus, old_pod, stamp):
    prometheus.value = Reply(200, vector({p: (NOW, "10") for p in PODS}))
    stamp_text = stamp if isinstance(stamp, str) else repr(stamp)
    prometheus.timestamps = Reply(
        200, vector({p: (NOW, repr(NOW)) for p in PODS} | {old_pod: (NOW, stamp_text)})
    )
    reading = read(source(prometheus.url, "teleport-auth"))
    assert isinstance(reading, MetricsStale), reading
    assert old_pod in str(reading)


@FUZZ
@given(st.sampled_from(PODS), st.sampled_from(["NaN", "1e400", "+Inf"]))
def test_a_sample_whose_own_time_is_not_a_number_spoils_the_reading(prometheus, pod, stamp):
    """The instant query's own stamp, where no timestamps query overrides it (custom)."""
    prometheus.value = Reply(200, envelope(
        [{"metric": {"pod": p}, "value": [NOW if p != pod else float(stamp), "10"]} for p in PODS]
    ))  # fmt: skip
    reading = read(source(prometheus.url, "custom"))
    assert isinstance(reading, MetricsError), reading


@FUZZ
@given(st.sampled_from(PODS), st.integers(min_value=2, max_value=4))
def test_duplicate_series_for_a_pod_spoil_the_reading(prometheus, pod, copies):
    items = [{"metric": {"pod": p}, "value": [NOW, "5"]} for p in PODS]
    items += [{"metric": {"pod": pod, "copy": str(i)}, "value": [NOW, "7"]} for i in range(copies)]
    prometheus.value = Reply(200, envelope(items))
    prometheus.timestamps = Reply(200, vector({p: (NOW, repr(NOW)) for p in PODS}))
    reading = read(source(prometheus.url, "teleport-auth"))
    assert isinstance(reading, MetricsDuplicateSeries), reading
    assert pod in str(reading)


def test_a_good_answer_is_read_as_it_is(prometheus):
    """What the fuzzing above holds to is not merely 'always an error'."""
    prometheus.value = Reply(200, vector({"auth-0": (NOW, "3"), "auth-1": (NOW, "0"),
                                          "auth-2": (NOW, "1e300")}))  # fmt: skip
    prometheus.timestamps = Reply(200, vector({p: (NOW, repr(NOW - 5)) for p in PODS}))
    reading = read(source(prometheus.url, "teleport-auth"))
    assert not isinstance(reading, MetricsError), reading
    assert {p: (v.load, v.timestamp) for p, v in reading.items()} == {
        "auth-0": (3.0, NOW - 5), "auth-1": (0.0, NOW - 5), "auth-2": (1e300, NOW - 5)
    }  # fmt: skip


def test_a_reading_is_one_query_with_its_timestamps_in_it(prometheus):
    """The operator's cost per tick: one PromQL query per balancer, not one per figure."""
    prometheus.value = Reply(200, vector({p: (NOW, "4") for p in PODS}))
    prometheus.timestamps = Reply(200, vector({p: (NOW, repr(NOW - 2)) for p in PODS}))
    prometheus.queries.clear()
    reading = read(source(prometheus.url, "teleport-auth"))
    assert not isinstance(reading, MetricsError), reading
    assert {v.timestamp for v in reading.values()} == {NOW - 2}
    (sent,) = prometheus.queries
    assert "timestamp(" in sent
