"""The agent's HTTP face: /healthz, /status, /metrics and the authenticated POST /v1/drain."""

from __future__ import annotations

import hmac
import ssl
from typing import Any

from aiohttp import web

from connbalance.agent.engine import DrainEngine, RequestState
from connbalance.agent.metrics import CONTENT_TYPE
from connbalance.model import DrainRequest, InvalidDrainRequest

# A drain request is a few hundred bytes; anything far larger is not one.
MAX_BODY_BYTES = 64 * 1024
_AGENT_KEY = web.AppKey("agent", DrainEngine)
_TOKEN_KEY = web.AppKey("token", str)


def build_http_app(agent: DrainEngine, *, token: str | None) -> web.Application:
    """The aiohttp application. With ``token`` None, POST /v1/drain refuses every request."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_AGENT_KEY] = agent
    app[_TOKEN_KEY] = token or ""
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/drain", _drain)
    return app


async def _healthz(request: web.Request) -> web.Response:
    # 200 even when degraded: a probe on the agent must never take its pod out of service.
    degraded = request.app[_AGENT_KEY].degraded
    return web.Response(text=f"ok, degraded: {degraded}\n" if degraded else "ok\n")


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_AGENT_KEY].status().to_wire())


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_AGENT_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _authorized(request: web.Request) -> bool:
    token = request.app[_TOKEN_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    # A header may carry any byte (aiohttp keeps the undecodable ones as surrogates): compare
    # bytes, in constant time, so a stray byte is a wrong token and never a server error.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _drain(request: web.Request) -> web.Response:
    agent = request.app[_AGENT_KEY]
    if not _authorized(request):
        agent.metrics.count_request("unauthorized")
        if not request.app[_TOKEN_KEY]:
            return _error(
                401,
                "HTTP intake is off: the agent was started without --token-file",
                field="Authorization",
            )
        return _error(
            401,
            "missing or wrong bearer token",
            field="Authorization",
            headers_hint="Authorization: Bearer <token>",
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        agent.metrics.count_request("invalid")
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes", field="body")
    try:
        drain = DrainRequest.from_json(body, now=agent.clock.now())
    except InvalidDrainRequest as exc:
        agent.metrics.count_request("invalid")
        return _error(400, exc.message, field=exc.field)
    status = await agent.submit(drain)
    payload = {**status.to_wire(), "duplicate": status.duplicate}
    if status.duplicate:
        return web.json_response(payload, status=200)
    if status.state is RequestState.REJECTED:
        return web.json_response(payload, status=422)
    return web.json_response(payload, status=202)


def server_tls(*, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context from a PEM certificate (chain) and key; OSError or ssl.SSLError when
    they cannot be read or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return context


class AgentServer:
    """The HTTP app served on a host and port (port 0 picks a free one; see ``port``); HTTPS
    with ``ssl_context`` (see ``server_tls``), since the token crosses the pod network."""

    def __init__(
        self,
        agent: DrainEngine,
        *,
        host: str,
        port: int,
        token: str | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._app = build_http_app(agent, token=token)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

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
        self._site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await self._site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
