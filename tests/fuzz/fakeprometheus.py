"""A tiny server on loopback answering Prometheus's instant-query API with what a test sets.

Real HTTP, so the answers go through the same client (requests, prometheus-api-client) as a
real Prometheus's; only their content is made up. The value query and the timestamps query of
a preset (the one with ``timestamp(``) are answered apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.12.9"


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


class FakePrometheus:
    def __init__(self) -> None:
        self.value = Reply(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
        self.timestamps = self.value
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query).get("query", [""])[0]
                fake.queries.append(query)
                if parts.path != "/api/v1/query":
                    reply = Reply(404, b"404 page not found", "text/plain")
                else:
                    reply = fake.timestamps if "timestamp(" in query else fake.value
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET  # noqa: N815 (the name http.server calls)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
