"""The operator's HTTP port: ``/metrics`` for Prometheus, ``/readyz`` apart from kopf's liveness.

Ready means the operator has started its watches and knows whether it leads: a standby is
ready too, since it is doing its job (waiting to take over).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def build_app(*, registry: CollectorRegistry, ready: asyncio.Event) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="starting: watches or leader election not settled\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(
    *, host: str, port: int, registry: CollectorRegistry, ready: asyncio.Event
) -> web.AppRunner:
    runner = web.AppRunner(build_app(registry=registry, ready=ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
