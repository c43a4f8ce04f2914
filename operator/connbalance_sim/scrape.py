"""``ScrapeLoadSource``: the load of each pod read from its own /metrics, with no Prometheus.

For the demo, the bench and the simulator's tests: each pod's metrics endpoint is
fetched directly and parsed with prometheus-client's own text parser. The figure per pod is what
the Prometheus presets compute: ``teleport-auth`` sums ``teleport_connected_resources`` over
``type`` and falls back to ``process_open_fds`` when a server lacks it; ``open-fds`` takes
``process_open_fds``. Same interface as the Prometheus source, and the same errors: doubtful data
raises a ``MetricsError`` instead of being returned.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from connbalance.model import PodLoad, PodName
from connbalance.ports import (
    MetricsDuplicateSeries,
    MetricsHttpError,
    MetricsInvalidValue,
    MetricsNotAVector,
    MetricsPodMissing,
    MetricsUnreachable,
)
from connbalance.prometheus.presets import PRESETS

# The presets' own metric names, in the order tried: the first one a pod exports is its figure.
PRESET_METRICS: Final[Mapping[str, tuple[str, ...]]] = {
    preset.name: preset.metrics for preset in PRESETS.values() if preset.metrics}


class ScrapeLoadSource:
    """Reads ``targets()[pod]`` (``host:port``, or a full URL) for each pod asked for."""

    def __init__(self, *, targets: Callable[[], Mapping[PodName, str]],
                 preset: str = "teleport-auth", timeout: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        if preset not in PRESET_METRICS:
            raise ValueError(
                f"preset {preset!r} cannot be scraped directly; use one of "
                f"{', '.join(PRESET_METRICS)}")
        self._targets = targets
        self._metrics = PRESET_METRICS[preset]
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def read(self, *, pods: Sequence[PodName]) -> Mapping[PodName, PodLoad]:
        if not pods:
            return {}  # as the Prometheus source: nothing asked, nothing to doubt
        targets = self._targets()
        missing = [pod for pod in pods if pod not in targets]
        if missing:
            raise MetricsPodMissing(f"pod {missing[0]} has no metrics endpoint")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        texts = await asyncio.gather(*(self._fetch(pod, targets[pod]) for pod in pods))
        now = self._clock()
        return {pod: PodLoad(pod=pod, load=self._figure(pod, text), timestamp=now)
                for pod, text in zip(pods, texts, strict=True)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, pod: PodName, target: str) -> str:
        url = target if "://" in target else f"http://{target}/metrics"
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise MetricsHttpError(f"pod {pod}: {url} answered HTTP {response.status}")
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise MetricsUnreachable(f"pod {pod}: {url}: {exc or type(exc).__name__}") from None

    def _figure(self, pod: PodName, text: str) -> float:
        samples: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        try:
            # A name may come back as several families (text split by other metrics): merge.
            for family in text_string_to_metric_families(text):
                samples.setdefault(family.name, []).extend(
                    (tuple(sorted(s.labels.items())), float(s.value)) for s in family.samples)
        except (ValueError, TypeError, IndexError) as exc:
            raise MetricsNotAVector(f"pod {pod}: not Prometheus text format ({exc})") from None
        for name in self._metrics:
            series = samples.get(name)
            if not series:
                continue
            seen: set[tuple[tuple[str, str], ...]] = set()
            total = 0.0
            for labels, value in series:
                if labels in seen:
                    raise MetricsDuplicateSeries(f"pod {pod}: {name}{dict(labels)} twice")
                seen.add(labels)
                if not math.isfinite(value) or value < 0:
                    raise MetricsInvalidValue(f"pod {pod}: {name} = {value}")
                total += value
            return total
        raise MetricsPodMissing(f"pod {pod} exports none of {', '.join(self._metrics)}")
