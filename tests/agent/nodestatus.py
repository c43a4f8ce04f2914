"""Reading a node agent's HTTP answers, wherever it runs (a process or a DaemonSet pod)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def node_agent_get(base: str, path: str) -> Any:
    """``path`` on the node agent at ``base`` (``http://host:port``): JSON, or the metrics text."""
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as answer:
        body = answer.read().decode()
    return json.loads(body) if path != "/metrics" else body


def node_agent_request(
    base: str, namespace: str, pod: str, request_id: str
) -> dict[str, Any] | None:
    """The node agent's status of one request on one pod, or None if it has none."""
    try:
        status = node_agent_get(base, f"/v1/pods/{namespace}/{pod}")
    except urllib.error.HTTPError:
        return None
    found: dict[str, Any] | None = next(
        (r for r in status["requests"] if r["id"] == request_id), None
    )
    return found
