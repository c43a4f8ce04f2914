"""The operator's own metrics, per ConnectionBalancer, served by ``connbalance run --metrics``.

Connections *requested* and connections the agents *confirm* they cycled are counted apart
(``outcome``), so a dashboard never mistakes a request for its effect.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from connbalance.controller import TickResult
from connbalance.model import Phase

REGISTRY = CollectorRegistry()
_BALANCER = ["namespace", "balancer"]

SKEW = Gauge("connbalance_skew", "max/mean load over the ready pods", _BALANCER,
             registry=REGISTRY)
POD_LOAD = Gauge("connbalance_pod_load", "each pod's load as last measured",
                 [*_BALANCER, "pod"], registry=REGISTRY)
PHASE = Gauge("connbalance_phase", "1 for the balancer's current phase, 0 for the others",
              [*_BALANCER, "phase"], registry=REGISTRY)
DRAINS = Counter("connbalance_drains_total", "drain requests delivered to pods", _BALANCER,
                 registry=REGISTRY)
CYCLED = Counter(
    "connbalance_cycled_connections_total",
    "client connections by outcome: requested of the agents, or confirmed cycled by them",
    [*_BALANCER, "outcome"],
    registry=REGISTRY,
)
RECONCILES = Counter("connbalance_reconciles_total",
                     "controller ticks run: each reads the pool and its load once", _BALANCER,
                     registry=REGISTRY)
RECONCILE_ERRORS = Counter("connbalance_reconcile_errors_total",
                           "reconciles that failed and were retried", _BALANCER,
                           registry=REGISTRY)
LEADER = Gauge("connbalance_leader", "1 while this operator instance holds the leader Lease",
               registry=REGISTRY)


def _labels(policy: str) -> tuple[str, str]:
    namespace, _, name = policy.partition("/")
    return namespace, name


def record(policy: str, result: TickResult) -> None:
    namespace, balancer = _labels(policy)
    RECONCILES.labels(namespace, balancer).inc()
    state = result.state
    if state.skew is not None:
        SKEW.labels(namespace, balancer).set(state.skew)
    for pod, load in result.seen.loads.items():
        POD_LOAD.labels(namespace, balancer, pod).set(load)
    for phase in Phase:
        PHASE.labels(namespace, balancer, phase.value).set(1 if phase is state.phase else 0)
    if result.issued:
        DRAINS.labels(namespace, balancer).inc(len(result.issued))
        CYCLED.labels(namespace, balancer, "requested").inc(sum(r.count for r in result.issued))


def record_confirmed(policy: str, count: int) -> None:
    """Connections an agent says it cycled, counted once, when its answer is final."""
    CYCLED.labels(*_labels(policy), "confirmed").inc(count)


def record_error(policy: str) -> None:
    RECONCILE_ERRORS.labels(*_labels(policy)).inc()


def forget(policy: str) -> None:
    """Drop a deleted balancer's series, so they do not linger at their last value."""
    namespace, balancer = _labels(policy)
    for gauge in (SKEW, POD_LOAD, PHASE):
        for labels in list(gauge._metrics):  # prometheus_client keeps children by label tuple
            if labels[:2] == (namespace, balancer):
                gauge.remove(*labels)
