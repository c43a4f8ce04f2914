"""The agent's own Prometheus metrics, one registry per agent so several can share a process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
REQUEST_RESULTS = ("accepted", "duplicate", "rejected", "invalid", "unauthorized")


class AgentMetrics:
    def __init__(
        self,
        *,
        mode: str,
        active: Callable[[], int],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.mode = mode
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.active = Gauge(
            "connbalance_agent_active_connections",
            "Client connections open now on the served port.",
            registry=self.registry,
        )
        self.active.set_function(lambda: float(active()))
        self.cycled = Counter(
            "connbalance_agent_cycled_connections",
            "Client connections the agent closed: graceful once quiet, forced at the deadline.",
            ["mode", "how"],
            registry=self.registry,
        )
        self.requests = Counter(
            "connbalance_agent_requests",
            "Drain requests received, by what the agent did with them.",
            ["result"],
            registry=self.registry,
        )
        self.can_cycle = Gauge(
            "connbalance_agent_can_cycle",
            "1 when the agent can cycle connections; 0 when it cannot and rejects every "
            "request (its /status says why under degraded).",
            registry=self.registry,
        )
        self.can_cycle.set(1)
        self.last_request = Gauge(
            "connbalance_agent_last_request_timestamp_seconds",
            "Unix time of the last drain request accepted.",
            registry=self.registry,
        )
        # Zero-valued children up front, so rate() and absent() behave before the first event.
        for how in ("graceful", "forced"):
            self.cycled.labels(mode=mode, how=how)
        for result in REQUEST_RESULTS:
            self.requests.labels(result=result)

    def count_cycled(self, *, forced: bool) -> None:
        self.cycled.labels(mode=self.mode, how="forced" if forced else "graceful").inc()

    def count_request(self, result: str) -> None:
        self.requests.labels(result=result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
