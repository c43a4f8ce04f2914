"""The ports the controller talks through, and the errors adapters may raise.

Four protocols: ``LoadSource`` (Prometheus, or the simulator's direct scrape), ``Fleet``
(Kubernetes, or the simulator's fleet), ``Actuator`` (a pod annotation, authenticated HTTP to
the agent, or the simulator's) and ``EventSink`` (Kubernetes Events, or the simulator's log).
Adapters implement them structurally, without inheriting. ``ports.gates`` adds
``ReadinessGate`` (a pod condition that takes a shedding pod out of its Services' endpoints).

Rule: declarations only. Nothing here does I/O or decides anything, and nothing is imported but
``model`` and the standard library.

Errors::

    PortError
    ├── MetricsError            (reason -> MetricsAvailable=False)
    │   ├── MetricsUnreachable      Prometheus did not answer
    │   ├── MetricsHttpError        it answered with an HTTP error
    │   ├── MetricsNotAVector       the query did not return an instant vector
    │   ├── MetricsEmpty            the result holds no series
    │   ├── MetricsPodMissing       a ready pod has no series
    │   ├── MetricsDuplicateSeries  a pod has more than one series
    │   ├── MetricsInvalidValue     NaN, Inf or negative
    │   └── MetricsStale            older than maxStaleness
    ├── FleetError              the pool could not be read
    └── ActuationError          a drain request could not be delivered
"""

from connbalance.ports.errors import (
    ActuationError,
    FleetError,
    MetricsDuplicateSeries,
    MetricsEmpty,
    MetricsError,
    MetricsHttpError,
    MetricsInvalidValue,
    MetricsNotAVector,
    MetricsPodMissing,
    MetricsStale,
    MetricsUnreachable,
    PortError,
)
from connbalance.ports.protocols import Actuator, EventSink, Fleet, FleetView, LoadSource

__all__ = [
    "ActuationError",
    "Actuator",
    "EventSink",
    "Fleet",
    "FleetError",
    "FleetView",
    "LoadSource",
    "MetricsDuplicateSeries",
    "MetricsEmpty",
    "MetricsError",
    "MetricsHttpError",
    "MetricsInvalidValue",
    "MetricsNotAVector",
    "MetricsPodMissing",
    "MetricsStale",
    "MetricsUnreachable",
    "PortError",
]
