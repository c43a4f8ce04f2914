"""The Prometheus LoadSource: per-pod load from an instant query, presets, connection settings.

Rule: an adapter. Imports only ``connbalance.model`` and ``connbalance.ports``; every bad answer
becomes a ``MetricsError`` from ``connbalance.ports`` (the controller turns its ``reason`` into
``MetricsAvailable=False`` and does not act). Values reach PromQL only through ``promql``.

Modules: ``presets`` (what each preset counts, templates), ``promql`` (escaping),
``connection`` (URL, token, TLS, headers, timeout; the HTTP call), ``answers`` (checks on the
result, pure), ``source`` (the async LoadSource).
"""

from connbalance.prometheus.connection import Connection
from connbalance.prometheus.presets import PRESETS, Pool, Preset, Queries, render
from connbalance.prometheus.source import PrometheusLoadSource

__all__ = ["PRESETS", "Connection", "Pool", "Preset", "PrometheusLoadSource", "Queries", "render"]
