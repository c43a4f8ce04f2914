"""The three ports the controller talks through, and the errors they may raise.

Adapters implement them: Prometheus or a direct scrape for ``LoadSource``; Kubernetes or the local
demo fleet for ``Fleet``; a pod annotation or authenticated HTTP for ``Actuator``. Declarations
only: no I/O here.

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
