"""A tiny server on loopback answering Prometheus's instant-query API with what a test sets.

Real HTTP, so the answers go through the same client (requests, prometheus-api-client) as a
real Prometheus's; only their content is made up. A test sets the value query's answer and the
timestamps query's apart; the one query a read sends (``Queries.combined``) is answered as
PromQL's ``or`` would: both vectors' series, the timestamps' marked with ``PART_LABEL``. An answer
that is not a vector on either side is given as it is, as the failing side would fail the query.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connbalance.prometheus.presets import PART_LABEL, TIMESTAMP_PART

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
                    reply = fake.answer(query)
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

    def answer(self, query: str) -> Reply:
        if PART_LABEL in query:
            return combined(self.value, self.timestamps)
        return self.timestamps if "timestamp(" in query else self.value

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _vector(reply: Reply) -> list[Any] | None:
    """The result list of a successful vector answer, or None for anything else."""
    try:
        answer = json.loads(reply.body)
    except ValueError:
        return None
    if reply.status != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
        return None
    data = answer.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        return None
    return result if isinstance(result, list) else None


def combined(value: Reply, timestamps: Reply) -> Reply:
    left, right = _vector(value), _vector(timestamps)
    if left is None:
        return value
    if right is None:
        return timestamps
    marked = []
    for item in right:
        if isinstance(item, dict) and isinstance(item.get("metric"), dict):
            item = {**item, "metric": {**item["metric"], PART_LABEL: TIMESTAMP_PART}}
        marked.append(item)
    body = {"status": "success", "data": {"resultType": "vector", "result": left + marked}}
    return Reply(200, json.dumps(body).encode())
