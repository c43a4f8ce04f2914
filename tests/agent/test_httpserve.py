"""The agents' HTTP server (agent/httpserve.py) over real TCP on loopback: routing, keep-alive,
HEAD, the body limit, malformed requests, a failing handler and a silent client."""

from __future__ import annotations

import asyncio
import json

from connbalance.agent.httpserve import HttpServer, Request, Response, Route, json_response

HOST = "127.0.14.1"


async def _echo(request: Request) -> Response:
    body = None if request.body is None else request.body.decode()
    return json_response({"method": request.method, "path": request.path, "body": body,
                          "params": dict(request.params),
                          "auth": request.header("Authorization").decode("latin-1")})


async def _broken(request: Request) -> Response:
    raise RuntimeError("a handler bug")


ROUTES = [Route("GET", "/echo", _echo), Route("POST", "/echo", _echo),
          Route("GET", "/pods/{namespace}/{name}", _echo), Route("GET", "/broken", _broken)]


async def _exchange(port: int, raw: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1) if until_close else reader.read(65536), 10)
    finally:
        writer.close()


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Each HTTP/1.1 answer in ``data``: status, lower-case headers, body (by Content-Length)."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return answers


def _serve(check, **options) -> None:
    async def run() -> None:
        server = HttpServer(ROUTES, host=HOST, port=0, max_body=64, **options)
        await server.start()
        try:
            await check(server.port)
        finally:
            await server.stop()

    asyncio.run(run())


def test_two_requests_on_one_connection_are_both_answered_and_routes_are_exact():
    async def check(port: int) -> None:
        data = await _exchange(port, b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\n"
                                     b"Authorization: Bearer \xff\r\n\r\n"
                                     b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                                     b"Connection: close\r\n\r\nhi")
        first, second = _answers(data)
        assert first[0] == 200
        assert json.loads(first[2]) == {"method": "GET", "path": "/echo", "body": "",
                                        "params": {}, "auth": "Bearer \xff"}
        assert json.loads(second[2])["body"] == "hi"
        for path, status in (("/echo/", 404), ("//echo", 404), ("/pods/a", 404), ("/nope", 404)):
            answer = _answers(await _exchange(
                port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()))
            assert answer[0][0] == status, path
        answer = _answers(await _exchange(
            port, b"DELETE /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        assert answer[0][0] == 405

    _serve(check)


def test_a_patterns_segments_are_percent_decoded_and_head_gets_the_headers_alone():
    async def check(port: int) -> None:
        got = _answers(await _exchange(port, b"GET /pods/kube%2Dsystem/a%20b HTTP/1.1\r\n"
                                             b"Host: a\r\nConnection: close\r\n\r\n"))
        assert json.loads(got[0][2])["params"] == {"namespace": "kube-system", "name": "a b"}
        raw = await _exchange(
            port, b"HEAD /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status_line, _, rest = raw.partition(b"\r\n")
        assert b" 200 " in status_line
        assert rest.endswith(b"\r\n\r\n")  # headers, and no body after them

    _serve(check)


def test_a_body_over_the_limit_reaches_the_handler_as_none_and_the_connection_closes():
    async def check(port: int) -> None:
        for framing in (b"Content-Length: 65\r\n\r\n" + b"x" * 65,
                        b"Transfer-Encoding: chunked\r\n\r\n41\r\n" + b"x" * 65 + b"\r\n0\r\n\r\n"):
            data = await _exchange(port, b"POST /echo HTTP/1.1\r\nHost: a\r\n" + framing
                                   + b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            answers = _answers(data)
            assert len(answers) == 1, answers  # closed: the request after it is not served
            assert json.loads(answers[0][2])["body"] is None
            assert answers[0][1]["connection"] == "close"
        at_limit = await _exchange(port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 64\r\n"
                                         b"Connection: close\r\n\r\n" + b"y" * 64)
        assert json.loads(_answers(at_limit)[0][2])["body"] == "y" * 64

    _serve(check)


def test_malformed_requests_get_a_4xx_and_a_failing_handler_a_500_and_the_server_goes_on():
    async def check(port: int) -> None:
        for raw in (b"GARBAGE\r\n\r\n", b"GET /echo HTTP/1.1\r\n\r\n",  # HTTP/1.1 needs a Host
                    b"GET /echo HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
                    b"GET /echo HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n"):
            answer = _answers(await _exchange(port, raw))
            assert 400 <= answer[0][0] < 500, (raw[:40], answer)
        broken = _answers(await _exchange(
            port, b"GET /broken HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        assert broken[0][0] == 500
        fine = _answers(await _exchange(
            port, b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        assert fine[0][0] == 200

    _serve(check)


def test_a_silent_client_is_disconnected_after_the_idle_time():
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /echo HTTP/1.1\r\n")  # and nothing more
        try:
            # The server closes it, well before the 10 s this waits.
            assert await asyncio.wait_for(reader.read(100), 10) == b""
        finally:
            writer.close()

    _serve(check, idle_seconds=0.3)
