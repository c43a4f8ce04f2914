"""Confirmations through Prometheus: a sidecar's own metrics, where no HTTP route reaches it.

With ``method: annotation`` the operator never talks to a sidecar, but Prometheus scrapes it
(the recipe's PodMonitor for the agent's port ``connbalance``). Each agent exports its latest
request as ``connbalance_agent_last_request_cycled_connections{request, state}`` (see
``connbalance.agent.lastrequest``), one series per agent. One instant query per read covers
every pod asked about, selected by the ``namespace`` label and the balancer's pod label, as
the load query selects them.

A pod whose series names another request, or that has no series, has not reported the request
yet: ``pending`` until the request's deadline plus the metrics' staleness bound (a scrape may
lag that long), then ``unseen`` (the agent's latest is another) or ``unreachable`` (no series:
the agent's metrics are not scraped, or it is down). The agent's reason for a refusal is in its
``/status``, not in a label; status then says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from connbalance.kube.confirm import FINAL, UNREACHABLE, UNSEEN, Asked, Outcome, not_reported
from connbalance.model import DrainRequest
from connbalance.ports import MetricsError
from connbalance.prometheus import Connection, promql
from connbalance.prometheus.answers import Sample, vector

# The agent's gauge (connbalance.agent.lastrequest.LAST_REQUEST_METRIC): the agent package is
# a sibling layer, not imported here; tests read a real agent's metrics through Prometheus.
LAST_REQUEST_METRIC: Final = "connbalance_agent_last_request_cycled_connections"
_NO_REASON: Final = "the agent's reason is in its /status, not in its metrics"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusConfirmations:
    connection: Connection
    namespace: str
    pod_label: str = "pod"
    grace_seconds: float = 60.0  # how far a scrape may lag: the balancer's maxStalenessSeconds
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        promql.label_name(self.pod_label, what="metrics.podLabel")

    def query(self, pods: Sequence[str]) -> str:
        """Every pod's latest request; two scrapes of one agent (two jobs) fold into one."""
        matchers = promql.join(
            [promql.equal("namespace", self.namespace), promql.one_of(self.pod_label, pods)]
        )
        return (f"max by ({self.pod_label}, request, state) "
                f"({LAST_REQUEST_METRIC}{{{matchers}}})")

    async def read(self, asked: Asked) -> dict[str, Outcome]:
        if not asked:
            return {}
        return await asyncio.to_thread(self._read, tuple(asked))

    def _read(self, asked: Asked) -> dict[str, Outcome]:
        query = self.query([p.name for p, _ in asked])
        where = f"Prometheus {self.connection.base_url} query {query}"
        try:
            samples = vector(self.connection.query(query), where=where)
        except MetricsError as exc:
            return {p.name: Outcome(request=r.id, requested=r.count, state=UNREACHABLE,
                                    reason=str(exc)) for p, r in asked}  # fmt: skip
        by_pod: dict[str, list[Sample]] = {}
        for sample in samples:
            by_pod.setdefault(sample.labels.get(self.pod_label, ""), []).append(sample)
        now = self.clock()
        return {p.name: self._outcome(r, by_pod.get(p.name, []), now=now) for p, r in asked}

    def _outcome(self, request: DrainRequest, samples: list[Sample], *, now: float) -> Outcome:
        mine = [s for s in samples if s.labels.get("request") == request.id]
        if mine:
            # Between two scrapes one series may say running and the next done: the final wins.
            best = max(mine, key=lambda s: (s.labels.get("state") in FINAL, s.value))
            state = best.labels.get("state", "")
            return Outcome(request=request.id, requested=request.count, state=state,
                           confirmed=int(best.value),
                           reason=_NO_REASON if state == "rejected" else "")  # fmt: skip
        if samples:
            latest = sorted(s.labels.get("request", "") for s in samples)
            return not_reported(
                request, now=now, grace_seconds=self.grace_seconds, never=UNSEEN,
                reason=f"the agent's latest request in Prometheus is {', '.join(latest)}",
            )  # fmt: skip
        return not_reported(
            request, now=now, grace_seconds=self.grace_seconds, never=UNREACHABLE,
            reason=f"Prometheus {self.connection.base_url} has no {LAST_REQUEST_METRIC} for "
            "the pod: is its agent's metrics port scraped?",
        )  # fmt: skip
