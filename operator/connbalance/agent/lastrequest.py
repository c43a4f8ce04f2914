"""The agent's last drain request as one gauge, so its confirmation can reach the operator
through Prometheus when nothing can ask the agent directly (``method: annotation``).

``connbalance_agent_last_request_cycled_connections{request, state}`` holds how many
connections the agent cycled for its latest request, labelled with that request's id and where
it stands (``running``, ``done``, ``rejected``). Only the latest request is exported: one series
per agent at any time, whatever the number of requests it has seen, so the label's cardinality
stays bounded. The counters in ``connbalance.agent.metrics`` carry no request id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LAST_REQUEST_METRIC: Final = "connbalance_agent_last_request_cycled_connections"


class _Status(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def cycled(self) -> int: ...

    @property
    def state(self) -> str: ...


class LastRequestCollector(Collector):
    """Reads the latest request's status at scrape time; nothing to keep in step."""

    def __init__(self, latest: Callable[[], _Status | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            LAST_REQUEST_METRIC,
            "Connections cycled for the agent's latest drain request, labelled with its id and "
            "state (running, done or rejected); only the latest request is exported.",
            labels=["request", "state"],
        )
        status = self._latest()
        if status is not None:
            family.add_metric([status.id, str(status.state)], float(status.cycled))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(LAST_REQUEST_METRIC, "", labels=["request", "state"])


__all__ = ["LAST_REQUEST_METRIC", "LastRequestCollector"]
