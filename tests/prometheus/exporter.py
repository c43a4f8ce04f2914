"""A pod's metrics endpoint, as Teleport's diag port serves it: a real prometheus-client process.

Run as ``python -m tests.prometheus.exporter --address 127.0.5.N --state FILE``. It prints
``port N`` once listening, and at every scrape reads FILE (JSON) to decide what to expose::

    {"resources": {"node": 60, "kube": 60},   # teleport_connected_resources{type}, or null
     "open_fds": 14,                           # process_open_fds, or null
     "age": 0}                                 # seconds: explicit sample timestamps this old

Values may be "NaN", "+Inf" or "-Inf". With ``--watch-stdin`` it exits when its stdin closes (the
test ended, or died); it always exits after ``--lifetime`` seconds. In the test cluster it runs as
a pod's container: ``--address`` defaults to $POD_IP and ``--port`` is the pod's metrics port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector


class StateCollector(Collector):
    def __init__(self, state: Path) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        data = json.loads(self.state.read_text())
        age = data.get("age")
        stamp = time.time() - float(age) if age else None
        resources = data.get("resources")
        if resources is not None:
            family = GaugeMetricFamily(
                "teleport_connected_resources",
                "Tracks the number and type of resources connected via keepalives",
                labels=["type"],
            )
            for kind, value in resources.items():
                family.add_metric([kind], float(value), timestamp=stamp)
            yield family
        if data.get("open_fds") is not None:
            family = GaugeMetricFamily("process_open_fds", "Number of open file descriptors.")
            family.add_metric([], float(data["open_fds"]), timestamp=stamp)
            yield family


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default=os.environ.get("POD_IP"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--lifetime", type=float, default=900.0)
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()
    if not args.address:
        parser.error("--address or $POD_IP is required")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(args.state))
    server = ThreadingHTTPServer((args.address, args.port), MetricsHandler.factory(registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"port {server.server_address[1]}", flush=True)
    if args.watch_stdin:
        # Bounded: stdin closes when the test (or pytest) goes away.
        watcher = threading.Thread(target=sys.stdin.read, daemon=True)
        watcher.start()
        watcher.join(timeout=args.lifetime)
    else:
        time.sleep(args.lifetime)
    # No shutdown(): it waits out serve_forever's poll; the serving thread is a daemon.
    server.server_close()


if __name__ == "__main__":
    main()
