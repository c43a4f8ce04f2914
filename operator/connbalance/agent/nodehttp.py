"""The node agent's HTTP face: /healthz, /status, /metrics and one pod's status.

``GET /v1/pods/{namespace}/{name}`` answers in the shape of a sidecar's ``/status`` (mode,
active, cycled_total, requests), so whoever reads confirmations reads both alike; 404 when the
node agent was asked nothing for that pod. Read-only: requests reach the node agent through the
pods' annotations only.
"""

from __future__ import annotations

from connbalance.agent.httpserve import (
    HttpServer,
    Request,
    Response,
    Route,
    json_response,
    text_response,
)
from connbalance.agent.metrics import CONTENT_TYPE
from connbalance.agent.node import NodeAgent

# The node agent reads no body; a request that sends one is answered without reading far.
_MAX_BODY_BYTES = 4096


def node_routes(agent: NodeAgent) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return text_response("ok\n")

    async def status(request: Request) -> Response:
        return json_response(agent.status())

    async def metrics(request: Request) -> Response:
        return Response(200, agent.metrics.render(), CONTENT_TYPE)

    async def pod(request: Request) -> Response:
        namespace, name = request.params["namespace"], request.params["name"]
        found = agent.pod_status(namespace, name)
        if found is None:
            return json_response(
                {"error": f"no drain request seen for pod {namespace}/{name} on this node"},
                status=404,
            )
        return json_response(found)

    return [Route("GET", "/healthz", healthz), Route("GET", "/status", status),
            Route("GET", "/metrics", metrics), Route("GET", "/v1/pods/{namespace}/{name}", pod)]


class NodeAgentServer(HttpServer):
    """The node agent's routes on a host and port (0 picks a free one; see ``port``)."""

    def __init__(self, agent: NodeAgent, *, host: str, port: int) -> None:
        super().__init__(node_routes(agent), host=host, port=port, max_body=_MAX_BODY_BYTES)


__all__ = ["NodeAgentServer", "node_routes"]
