"""Errors raised by adapters. Each carries a CamelCase ``reason`` for conditions and Events."""


from typing import ClassVar


class PortError(Exception):
    reason: ClassVar[str] = "PortError"


class MetricsError(PortError):
    reason: ClassVar[str] = "MetricsError"


class MetricsUnreachable(MetricsError):
    reason = "PrometheusUnreachable"


class MetricsHttpError(MetricsError):
    reason = "PrometheusHTTPError"


class MetricsNotAVector(MetricsError):
    reason = "NotAVector"


class MetricsEmpty(MetricsError):
    reason = "EmptyResult"


class MetricsPodMissing(MetricsError):
    reason = "PodMissing"

    def __init__(self, message: str, *, pods: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.pods = pods  # the ready pods without a series, where known


class MetricsDuplicateSeries(MetricsError):
    reason = "DuplicateSeries"


class MetricsInvalidValue(MetricsError):
    reason = "InvalidValue"


class MetricsStale(MetricsError):
    reason = "StaleSamples"


class FleetError(PortError):
    reason = "FleetUnavailable"


class ActuationError(PortError):
    reason = "DeliveryFailed"
