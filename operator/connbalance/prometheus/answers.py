"""From Prometheus's answer to one load per pod, or a MetricsError that says what was wrong.

Pure functions over the decoded ``data.result``: no I/O, no clock (``now`` is passed in).
The checks run in the order a person would fix them: the query's shape, then the pool's
coverage, then the values, then their age.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connbalance.model import PodLoad, PodName
from connbalance.ports import (
    MetricsDuplicateSeries,
    MetricsEmpty,
    MetricsInvalidValue,
    MetricsNotAVector,
    MetricsPodMissing,
    MetricsStale,
)


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float
    timestamp: float


def vector(result: Any, *, where: str) -> list[Sample]:
    """The samples of an instant vector. MetricsNotAVector for a scalar, a string or a matrix.

    prometheus-api-client hands back only ``data.result``; its shape tells the type apart: a
    vector is a list of ``{"metric", "value"}``, a matrix a list of ``{"metric", "values"}``, a
    scalar or a string a bare ``[time, "text"]`` pair.
    """
    if not isinstance(result, list):
        raise MetricsNotAVector(f"{where} returned {type(result).__name__}, not an instant vector")
    if len(result) == 2 and not isinstance(result[0], dict):
        kind = "a scalar" if _is_number(result[1]) else "a string"
        raise MetricsNotAVector(
            f"{where} returned {kind} ({_short(result[1])}), not an instant vector"
        )
    samples = []
    for item in result:
        if isinstance(item, dict) and "values" in item:
            raise MetricsNotAVector(
                f"{where} returned a range vector (matrix), not an instant vector: "
                "drop the [range] selector or wrap it in a function such as last_over_time"
            )
        try:
            labels, (stamp, text) = item["metric"], item["value"]
            sample = Sample(labels=_label_set(labels), value=float(text), timestamp=float(stamp))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise MetricsNotAVector(f"{where} returned an unexpected item {_short(item)}") from e
        if not math.isfinite(sample.timestamp):
            raise MetricsNotAVector(f"{where} returned a sample without a time: {_short(item)}")
        samples.append(sample)
    return samples


def _label_set(labels: object) -> dict[str, str]:
    """A series' labels: names and values are strings in every answer Prometheus gives."""
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise TypeError("labels must map names to strings")
    return dict(labels)


def _short(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 200 else text[:200] + "..."


def per_pod(
    samples: Sequence[Sample], *, pod_label: str, pods: Sequence[PodName] | None, where: str
) -> dict[PodName, Sample]:
    """One sample per pod: the pods named, or every pod in the result when ``pods`` is None."""
    if not samples:
        raise MetricsEmpty(f"{where} returned no series")
    by_pod: dict[PodName, Sample] = {}
    unnamed = 0
    for sample in samples:
        name = sample.labels.get(pod_label)
        if name is None:
            unnamed += 1
            continue
        pod = PodName(name)
        if pod in by_pod and (pods is None or pod in pods):
            raise MetricsDuplicateSeries(
                f"{where} returned two series for pod {pod}: {_labels(by_pod[pod].labels)} and "
                f"{_labels(sample.labels)}; aggregate them, e.g. sum by ({pod_label}) (...)"
            )
        by_pod[pod] = sample
    if pods is None:
        if not by_pod:
            raise MetricsPodMissing(
                f"{where}: none of its {unnamed} series has the pod label {pod_label!r}"
            )
        return by_pod
    missing = [p for p in pods if p not in by_pod]
    if missing:
        hint = f"; {unnamed} series have no {pod_label!r} label" if unnamed else ""
        raise MetricsPodMissing(
            f"{where} has no series for pod {', '.join(missing)} "
            f"(it has {', '.join(sorted(by_pod)) or 'none'}{hint})",
            pods=tuple(missing),
        )
    return {p: by_pod[p] for p in pods}


def loads(
    chosen: Mapping[PodName, Sample],
    *,
    timestamps: Mapping[PodName, float],
    now: float,
    max_staleness_seconds: float,
    where: str,
) -> dict[PodName, PodLoad]:
    """Check every value and its age. ``timestamps`` (the oldest raw sample per pod) wins over
    the evaluation time that an instant query stamps on every result."""
    for pod, sample in chosen.items():
        if math.isnan(sample.value) or math.isinf(sample.value) or sample.value < 0:
            raise MetricsInvalidValue(
                f"{where} gave pod {pod} the value {_number(sample.value)}: a load must be a "
                "finite number, zero or more"
            )
    result = {}
    for pod, sample in chosen.items():
        stamp = timestamps.get(pod, sample.timestamp)
        age = now - stamp
        if not math.isfinite(stamp):
            raise MetricsStale(
                f"{where}: the sample for pod {pod} has no valid time ({_number(stamp)})"
            )
        if age > max_staleness_seconds:
            raise MetricsStale(
                f"{where}: the sample for pod {pod} is {age:.0f}s old, more than maxStaleness "
                f"({max_staleness_seconds:g}s)"
            )
        result[pod] = PodLoad(pod=pod, load=sample.value, timestamp=stamp)
    return result


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
