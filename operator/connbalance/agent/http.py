"""The agent's HTTP face: /healthz, /status, /metrics and the authenticated POST /v1/drain."""

from __future__ import annotations

import hmac
import ssl
from typing import Any

from connbalance.agent.engine import DrainEngine, RequestState
from connbalance.agent.httpserve import (
    HttpServer,
    Request,
    Response,
    Route,
    json_response,
    text_response,
)
from connbalance.agent.metrics import CONTENT_TYPE
from connbalance.model import DrainRequest, InvalidDrainRequest

# A drain request is a few hundred bytes; anything far larger is not one.
MAX_BODY_BYTES = 64 * 1024


def agent_routes(agent: DrainEngine, *, token: str | None) -> list[Route]:
    """The agent's routes. With ``token`` None, POST /v1/drain refuses every request."""

    async def healthz(request: Request) -> Response:
        # 200 even when degraded: a probe on the agent must never take its pod out of service.
        degraded = agent.degraded
        return text_response(f"ok, degraded: {degraded}\n" if degraded else "ok\n")

    async def status(request: Request) -> Response:
        return json_response(agent.status().to_wire())

    async def metrics(request: Request) -> Response:
        return Response(200, agent.metrics.render(), CONTENT_TYPE)

    async def drain(request: Request) -> Response:
        return await _drain(agent, token or "", request)

    return [Route("GET", "/healthz", healthz), Route("GET", "/status", status),
            Route("GET", "/metrics", metrics), Route("POST", "/v1/drain", drain)]


def _authorized(token: str, request: Request) -> bool:
    scheme, _, given = request.header("authorization").partition(b" ")
    if not token or scheme.lower() != b"bearer":
        return False
    # A header may carry any byte: compare bytes, in constant time, so a stray byte is a wrong
    # token and never a server error.
    return hmac.compare_digest(given.strip(), token.encode())


def _error(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status=status)


async def _drain(agent: DrainEngine, token: str, request: Request) -> Response:
    if not _authorized(token, request):
        agent.metrics.count_request("unauthorized")
        if not token:
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
    if request.body is None:
        agent.metrics.count_request("invalid")
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes", field="body")
    try:
        drain = DrainRequest.from_json(request.body, now=agent.clock.now())
    except InvalidDrainRequest as exc:
        agent.metrics.count_request("invalid")
        return _error(400, exc.message, field=exc.field)
    status = await agent.submit(drain)
    payload = {**status.to_wire(), "duplicate": status.duplicate}
    if status.duplicate:
        return json_response(payload, status=200)
    if status.state is RequestState.REJECTED:
        return json_response(payload, status=422)
    return json_response(payload, status=202)


def server_tls(*, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context from a PEM certificate (chain) and key; OSError or ssl.SSLError when
    they cannot be read or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return context


class AgentServer(HttpServer):
    """The agent's routes served on a host and port (port 0 picks a free one; see ``port``);
    HTTPS with ``ssl_context`` (see ``server_tls``), since the token crosses the pod network."""

    def __init__(
        self,
        agent: DrainEngine,
        *,
        host: str,
        port: int,
        token: str | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(agent_routes(agent, token=token), host=host, port=port,
                         max_body=MAX_BODY_BYTES, ssl_context=ssl_context)
