"""A small server for test pods: HTTP on $POD_IP:8080, Prometheus metrics on $POD_IP:9100.

``GET /`` answers with the pod's name, ``GET /healthz`` is the readiness endpoint, and
``GET /ready/off`` / ``GET /ready/on`` make it fail or pass, so tests can flip readiness.
Run as ``python tests/cluster/podserver.py`` inside a pod of the test cluster.
"""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import Counter, Gauge, start_http_server

REQUESTS = Counter("podserver_requests", "HTTP requests served")
READY = Gauge("podserver_ready", "1 while the readiness endpoint passes")
ready = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        REQUESTS.inc()
        if self.path == "/ready/off":
            ready.clear()
        elif self.path == "/ready/on":
            ready.set()
        READY.set(1 if ready.is_set() else 0)
        if self.path == "/healthz" and not ready.is_set():
            self.reply(503, "not ready\n")
        else:
            self.reply(200, f"{os.environ.get('POD_NAME', '')}\n")

    def reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    ip = os.environ.get("POD_IP", "127.0.0.1")
    ready.set()
    READY.set(1)
    start_http_server(int(os.environ.get("METRICS_PORT", "9100")), addr=ip)
    server = ThreadingHTTPServer((ip, int(os.environ.get("HTTP_PORT", "8080"))), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"podserver: serving on {ip}", flush=True)
    server.serve_forever()
    print("podserver: stopped on SIGTERM", flush=True)


if __name__ == "__main__":
    main()
