"""ScrapeLoadSource against real metrics endpoints (prometheus-client's own HTTP server)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from threading import Thread

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from connbalance.model import PodName
from connbalance.ports import (
    MetricsDuplicateSeries,
    MetricsHttpError,
    MetricsInvalidValue,
    MetricsPodMissing,
    MetricsUnreachable,
)
from connbalance_sim.scrape import ScrapeLoadSource

HOST = "127.0.8.250"


def _exporter(values: dict[str, float], *, metric: str = "teleport_connected_resources") -> str:
    registry = CollectorRegistry()
    gauge = Gauge(metric, "test", ["type"], registry=registry)
    for kind, value in values.items():
        gauge.labels(type=kind).set(value)
    server, _ = start_http_server(0, addr=HOST, registry=registry)
    _servers.append(server)
    return f"{HOST}:{server.server_port}"


_servers: list[HTTPServer] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _servers:
        server = _servers.pop()
        server.shutdown()
        server.server_close()


def _read(targets: dict[str, str], pods: list[str], **kwargs: object) -> dict[str, float]:
    async def go() -> dict[str, float]:
        source = ScrapeLoadSource(targets=lambda: {PodName(k): v for k, v in targets.items()},
                                  **kwargs)  # type: ignore[arg-type]
        try:
            loads = await source.read(pods=[PodName(p) for p in pods])
        finally:
            await source.close()
        return {str(k): v.load for k, v in loads.items()}

    return asyncio.run(go())


def test_sums_teleport_connected_resources_over_type_per_pod():
    targets = {"a": _exporter({"node": 40, "app": 2}), "b": _exporter({"node": 7})}
    assert _read(targets, ["a", "b"]) == {"a": 42.0, "b": 7.0}


def test_falls_back_to_open_fds_when_a_server_lacks_the_teleport_metric():
    registry = CollectorRegistry()
    Gauge("process_open_fds", "fds", registry=registry).set(17)
    server, _ = start_http_server(0, addr=HOST, registry=registry)
    _servers.append(server)
    assert _read({"a": f"{HOST}:{server.server_port}"}, ["a"]) == {"a": 17.0}


def test_reads_the_real_simulated_server():
    with subprocess.Popen([sys.executable, "-m", "connbalance_sim.server", "--listen",
                           f"{HOST}:0", "--metrics", f"{HOST}:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        try:
            assert process.stdout is not None
            ports = json.loads(process.stdout.readline())
            loads = _read({"a": f"{HOST}:{ports['metrics']}"}, ["a"])
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert loads == {"a": 0.0}


def test_raises_pod_missing_for_a_pod_without_an_endpoint():
    with pytest.raises(MetricsPodMissing):
        _read({"a": _exporter({"node": 1})}, ["a", "b"])


def test_raises_pod_missing_when_neither_metric_is_exported():
    target = _exporter({"node": 1}, metric="something_else")
    with pytest.raises(MetricsPodMissing):
        _read({"a": target}, ["a"])


def test_raises_unreachable_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with pytest.raises(MetricsUnreachable):
        _read({"a": f"{HOST}:{port}"}, ["a"], timeout=1.0)


def test_raises_invalid_value_for_a_negative_figure():
    with pytest.raises(MetricsInvalidValue):
        _read({"a": _exporter({"node": -3})}, ["a"])


class _Fixed(BaseHTTPRequestHandler):
    status = 200
    body = b""

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _fixed(status: int, body: bytes) -> str:
    handler = type("Handler", (_Fixed,), {"status": status, "body": body})
    server = HTTPServer((HOST, 0), handler)
    Thread(target=server.serve_forever, daemon=True).start()
    _servers.append(server)
    return f"{HOST}:{server.server_port}"


def test_raises_http_error_when_the_endpoint_answers_an_error():
    with pytest.raises(MetricsHttpError):
        _read({"a": _fixed(500, b"oops")}, ["a"])


def test_raises_duplicate_series_when_a_series_appears_twice():
    body = (b'teleport_connected_resources{type="node"} 3\n'
            b'teleport_connected_resources{type="node"} 4\n')
    with pytest.raises(MetricsDuplicateSeries):
        _read({"a": _fixed(200, body)}, ["a"])
