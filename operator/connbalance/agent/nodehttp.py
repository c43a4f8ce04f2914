"""The node agent's HTTP face: /healthz, /status, /metrics and one pod's status.

``GET /v1/pods/{namespace}/{name}`` answers in the shape of a sidecar's ``/status`` (mode,
active, cycled_total, requests), so whoever reads confirmations reads both alike; 404 when the
node agent was asked nothing for that pod. Read-only: requests reach the node agent through the
pods' annotations only.
"""

from __future__ import annotations

from aiohttp import web

from connbalance.agent.metrics import CONTENT_TYPE
from connbalance.agent.node import NodeAgent

_AGENT_KEY = web.AppKey("node_agent", NodeAgent)


def build_node_app(agent: NodeAgent) -> web.Application:
    app = web.Application()
    app[_AGENT_KEY] = agent
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/pods/{namespace}/{name}", _pod)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_AGENT_KEY].status())


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_AGENT_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _pod(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    found = request.app[_AGENT_KEY].pod_status(namespace, name)
    if found is None:
        return web.json_response(
            {"error": f"no drain request seen for pod {namespace}/{name} on this node"},
            status=404,
        )
    return web.json_response(found)


class NodeAgentServer:
    """The app on a host and port (0 picks a free one; see ``port``)."""

    def __init__(self, agent: NodeAgent, *, host: str, port: int) -> None:
        self._app = build_node_app(agent)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the HTTP server has not started")
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("the HTTP server has no address")

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


__all__ = ["NodeAgentServer", "build_node_app"]
