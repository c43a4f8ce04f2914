"""The operator's own metrics, per ConnectionBalancer, served by ``connbalance run --metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from connbalance.controller import TickResult
from connbalance.model import Phase

REGISTRY = CollectorRegistry()
SKEW = Gauge("connbalance_skew", "max/mean load over the ready pods", ["policy"], registry=REGISTRY)
PHASE = Gauge(
    "connbalance_phase",
    "1 for the policy's current phase, 0 for the others",
    ["policy", "phase"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "connbalance_drain_requests_total",
    "drain requests delivered to pods",
    ["policy"],
    registry=REGISTRY,
)
ASKED = Counter(
    "connbalance_connections_requested_total",
    "client connections pods were asked to cycle",
    ["policy"],
    registry=REGISTRY,
)


def record(policy: str, result: TickResult) -> None:
    state = result.state
    if state.skew is not None:
        SKEW.labels(policy=policy).set(state.skew)
    for phase in Phase:
        PHASE.labels(policy=policy, phase=phase.value).set(1 if phase is state.phase else 0)
    if result.issued:
        REQUESTS.labels(policy=policy).inc(len(result.issued))
        ASKED.labels(policy=policy).inc(sum(r.count for r in result.issued))
