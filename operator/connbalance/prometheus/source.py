"""``PrometheusLoadSource``: the LoadSource users point at their Prometheus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from connbalance.model import MetricsSpec, PodLoad, PodName
from connbalance.prometheus import answers
from connbalance.prometheus.connection import Connection
from connbalance.prometheus.presets import PART_LABEL, TIMESTAMP_PART, Pool, Queries, render


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusLoadSource:
    """One instant query per read: one load per pod, stamped with its oldest raw sample.

    Every doubtful answer raises a MetricsError (see ``connbalance.ports``) whose message names
    the URL and, where there is one, the pod and the value; the caller never gets partial data.
    """

    connection: Connection
    namespace: str
    selector: tuple[tuple[str, str], ...] = ()
    preset: str = "teleport-auth"
    query: str | None = None
    pod_label: str = "pod"
    max_staleness_seconds: float = 60.0
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if not self.max_staleness_seconds > 0:
            raise ValueError(f"maxStaleness must be positive, not {self.max_staleness_seconds!r}")
        self.queries(pods=())  # a bad preset, query, label or namespace fails here, not per tick

    @classmethod
    def from_spec(
        cls,
        spec: MetricsSpec,
        *,
        namespace: str,
        selector: Sequence[tuple[str, str]] = (),
        bearer_token: str | None = None,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> PrometheusLoadSource:
        """Build from a policy's metrics. ``bearer_token`` and ``ca_file`` stand for what the
        kube layer read from ``bearerTokenSecret`` and ``caSecret``; they override the files."""
        if spec.bearer_token_secret is not None and bearer_token is None:
            raise ValueError(
                "metrics.prometheus.bearerTokenSecret is set: pass the token read from "
                f"Secret {spec.bearer_token_secret.name} as bearer_token"
            )
        if spec.ca_secret is not None and ca_file is None:
            raise ValueError(
                "metrics.prometheus.caSecret is set: write the bundle read from Secret "
                f"{spec.ca_secret.name} to a file and pass it as ca_file"
            )
        if spec.url is None:
            raise ValueError("metrics.prometheus.url: required (no default given here)")
        connection = Connection(
            url=spec.url,
            bearer_token=bearer_token,
            bearer_token_file=None if bearer_token is not None else spec.bearer_token_file,
            ca_file=ca_file or spec.ca_file,
            insecure_skip_verify=spec.insecure_skip_verify,
            headers=spec.headers,
            timeout_seconds=spec.timeout_seconds,
        )
        return cls(
            connection=connection,
            namespace=namespace,
            selector=tuple(selector),
            preset=spec.preset,
            query=spec.query,
            pod_label=spec.pod_label,
            max_staleness_seconds=spec.max_staleness_seconds,
            clock=clock,
        )

    def queries(self, *, pods: Sequence[PodName]) -> Queries:
        pool = Pool(namespace=self.namespace, selector=self.selector, pods=tuple(pods))
        return render(preset=self.preset, query=self.query, pool=pool, pod_label=self.pod_label)

    async def read(self, *, pods: Sequence[PodName]) -> Mapping[PodName, PodLoad]:
        """One load per pod named; the query selects exactly those pods in the namespace."""
        if not pods:
            return {}
        return await asyncio.to_thread(self._read, tuple(pods))

    async def read_all(self) -> Mapping[PodName, PodLoad]:
        """Every pod the query returns, selected by namespace and the selector as metric labels
        (for ``connbalance plan`` without a kubeconfig, where the pod names are not known)."""
        return await asyncio.to_thread(self._read, None)

    def _read(self, pods: tuple[PodName, ...] | None) -> dict[PodName, PodLoad]:
        queries = self.queries(pods=pods or ())
        where = f"Prometheus {self.connection.base_url} query {queries.value}"
        samples = answers.vector(self.connection.query(queries.combined), where=where)
        values = [s for s in samples if s.labels.get(PART_LABEL) != TIMESTAMP_PART]
        chosen = answers.per_pod(values, pod_label=self.pod_label, pods=pods, where=where)
        stamps = {
            PodName(s.labels[self.pod_label]): s.value
            for s in samples
            if s.labels.get(PART_LABEL) == TIMESTAMP_PART and self.pod_label in s.labels
        }
        return answers.loads(
            chosen,
            timestamps=stamps,
            now=self.clock(),
            max_staleness_seconds=self.max_staleness_seconds,
            where=f"Prometheus {self.connection.base_url}",
        )
