"""``HttpActuator`` against a real HTTP server on loopback, standing where the agent listens: the
annotation first, then the POST with the request as JSON and the bearer token."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from connbalance.controller import RecordingActuator
from connbalance.kube.actuator import HttpActuator
from connbalance.model import DrainRequest, PodName, PodState, RequestId
from connbalance.ports import ActuationError

TOKEN = "t0ken-from-the-secret"
ISSUED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REQUEST = DrainRequest(
    id=RequestId("cb.e1.1.auth-0"),
    count=17,
    window_seconds=10.0,
    quiet_millis=200,
    deadline=ISSUED + timedelta(seconds=60),
    policy="teleport/auth",
    issued_at=ISSUED,
    steer=True,
)


class Agent:
    """An aiohttp app on 127.0.0.1 that records every request and answers as ``answer`` says;
    like the real agent, it refuses a wrong bearer token with 401."""

    def __init__(self, answer: Callable[[web.Request], Awaitable[web.Response]] | None = None):
        self.received: list[dict[str, Any]] = []
        self._answer = answer
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(
            {
                "method": request.method,
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "content_type": request.headers.get("Content-Type"),
                "body": await request.text(),
            }
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, text="missing or wrong bearer token")
        if self._answer is not None:
            return await self._answer(request)
        return web.json_response({"accepted": True}, status=202)

    async def __aenter__(self) -> Agent:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def pod(ip: str | None = "127.0.0.1") -> PodState:
    return PodState(name=PodName("auth-0"), ready=True, ready_since=0.0, uid="uid-0", ip=ip)


def actuator(port: int, *, token: str = TOKEN, timeout: float = 5.0):
    annotate = RecordingActuator()
    return HttpActuator(annotate=annotate, port=port, token=token, timeout=timeout), annotate


def deliver(http: HttpActuator, target: PodState | None = None) -> None:
    asyncio.run(http.deliver(pod=target or pod(), request=REQUEST))


def test_a_request_is_annotated_then_posted_as_json_with_the_bearer_token():
    async def scenario() -> tuple[Agent, RecordingActuator]:
        async with Agent() as agent:
            http, annotate = actuator(agent.port)
            await http.deliver(pod=pod(), request=REQUEST)
            return agent, annotate

    agent, annotate = asyncio.run(scenario())
    assert annotate.delivered == [("auth-0", REQUEST)]
    [received] = agent.received
    assert received["method"] == "POST"
    assert received["path"] == "/v1/drain"
    assert received["authorization"] == f"Bearer {TOKEN}"
    assert received["content_type"] == "application/json"
    body = json.loads(received["body"])
    assert body == REQUEST.to_wire()
    assert DrainRequest.from_wire(body, now=ISSUED) == REQUEST


def test_a_wrong_token_is_an_actuation_error_naming_the_401():
    async def scenario() -> tuple[Agent, RecordingActuator, ActuationError]:
        async with Agent() as agent:
            http, annotate = actuator(agent.port, token="not-the-token")
            with pytest.raises(ActuationError) as failed:
                await http.deliver(pod=pod(), request=REQUEST)
            return agent, annotate, failed.value

    agent, annotate, error = asyncio.run(scenario())
    assert agent.received[0]["authorization"] == "Bearer not-the-token"
    assert f"agent http://127.0.0.1:{agent.port}/v1/drain answered 401" in str(error)
    assert "missing or wrong bearer token" in str(error)
    # The annotation was written first: the agent's watch still gets the request.
    assert annotate.delivered == [("auth-0", REQUEST)]


@pytest.mark.parametrize(
    ("status", "text"),
    [(400, "count: must be an integer"), (409, "request id already seen"), (503, "draining")],
)
def test_an_error_answer_is_an_actuation_error_with_its_status_and_text(status, text):
    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, text=text)

    async def scenario() -> tuple[int, ActuationError]:
        async with Agent(answer) as agent:
            http, _ = actuator(agent.port)
            with pytest.raises(ActuationError) as failed:
                await http.deliver(pod=pod(), request=REQUEST)
            return agent.port, failed.value

    port, error = asyncio.run(scenario())
    assert str(error) == f"agent http://127.0.0.1:{port}/v1/drain answered {status}: {text}"


def test_a_long_error_answer_is_cut_to_200_characters():
    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=500, text="x" * 5000)

    async def scenario() -> ActuationError:
        async with Agent(answer) as agent:
            http, _ = actuator(agent.port)
            with pytest.raises(ActuationError) as failed:
                await http.deliver(pod=pod(), request=REQUEST)
            return failed.value

    assert str(asyncio.run(scenario())).endswith(": " + "x" * 200)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_agent_is_an_actuation_error_after_the_annotation():
    port = closed_port()
    http, annotate = actuator(port)
    with pytest.raises(
        ActuationError, match=rf"agent http://127.0.0.1:{port}/v1/drain unreachable"
    ):
        deliver(http)
    assert annotate.delivered == [("auth-0", REQUEST)]


def test_an_agent_that_never_answers_times_out_as_unreachable():
    release = asyncio.Event()

    async def answer(_: web.Request) -> web.Response:
        await release.wait()  # set only once the client has given up
        return web.Response(status=202)

    async def scenario() -> ActuationError:
        async with Agent(answer) as agent:
            http, _ = actuator(agent.port, timeout=0.5)
            with pytest.raises(ActuationError) as failed:
                await http.deliver(pod=pod(), request=REQUEST)
            release.set()
            return failed.value

    assert str(asyncio.run(scenario())).endswith("unreachable: no answer within 0.5s")


def test_a_pod_without_an_ip_is_annotated_but_not_posted():
    http, annotate = actuator(closed_port())
    with pytest.raises(ActuationError, match="pod auth-0 has no IP to reach its agent"):
        deliver(http, pod(ip=None))
    assert annotate.delivered == [("auth-0", REQUEST)]
