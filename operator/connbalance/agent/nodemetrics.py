"""The node agent's own metrics, and those of each pod it serves, labelled with the pod.

Each pod's ``ResetAgent`` keeps its own registry (as a sidecar does); the node agent's registry
collects them all at scrape time under the same names, with ``namespace`` and ``pod`` labels
added, so one dashboard reads sidecars and node agents alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from connbalance.agent.engine import DrainEngine

RESULTS = ("accepted", "duplicate", "rejected", "invalid", "unauthorized", "unreachable")


class _Named(Protocol):
    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


Served = Callable[[], Sequence[tuple[_Named, DrainEngine]]]


class _PerPod(Collector):
    def __init__(self, served: Served) -> None:
        self._served = served

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pod, engine in self._served():
            extra = {"namespace": pod.namespace, "pod": pod.name}
            for family in engine.metrics.registry.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(
                        sample.name, {**sample.labels, **extra}, sample.value, sample.timestamp
                    )
        yield from families.values()


class NodeMetrics:
    def __init__(self, *, served: Served, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "connbalance_node_agent_requests",
            "Drain requests seen on this node's pods, by what the node agent did with them "
            "(unauthorized: no ConnectionBalancer of agent node selects the pod; unreachable: "
            "its network namespace could not be found or entered).",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.requests.labels(result=result)
        self.pods = Gauge(
            "connbalance_node_agent_pods_served",
            "Pods whose network namespace the node agent holds open.",
            registry=self.registry,
        )
        self.pods.set_function(lambda: float(len(served())))
        self.registry.register(_PerPod(served))

    def count(self, result: str) -> None:
        self.requests.labels(result=result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["RESULTS", "NodeMetrics"]
