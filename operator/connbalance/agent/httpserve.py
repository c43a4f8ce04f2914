"""The agents' HTTP/1.1 server: a few routes on h11 and asyncio's streams.

aiohttp's server cost each agent about 12 MiB of resident memory, more than a tenth of what a
proxy holding 20,000 idle connections needs in all; the agents serve a handful of routes to one
operator and one scraper. h11 is the protocol's state machine alone (parsing, framing, keep-alive,
chunked bodies) and costs well under 1 MiB; this module adds the routing, the body limit and the
timeouts.

- A route is a method and a pattern; a pattern's ``{name}`` segment matches one path segment,
  percent-decoded into ``Request.params``. The query is dropped, nothing else is normalised.
- A body larger than ``max_body`` is not read past the limit: the handler gets ``body`` None and
  answers (a 413, after its own checks); the connection is then closed.
- A request the parser refuses is answered with h11's status hint (400, or 431 for huge headers)
  in plain text, and the connection is closed.
- A client silent for ``idle_seconds`` is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import h11

log = logging.getLogger(__name__)

_READ_CHUNK: Final = 65536
# Reading what a refused client still sends, after its answer, so that closing does not reset
# the connection (and the answer with it) while the client is mid-body.
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query, as sent (not percent-decoded)
    headers: Mapping[str, bytes]  # lower-case names; a repeated header keeps its last value
    body: bytes | None  # None: larger than the server's max_body, and not read past it
    params: Mapping[str, str] = field(default_factory=dict)  # the pattern's {name} segments

    def header(self, name: str) -> bytes:
        return self.headers.get(name.lower(), b"")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


def text_response(text: str, *, status: int = 200) -> Response:
    return Response(status, text.encode())


def json_response(data: Any, *, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json")


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    handler: Handler

    def match(self, path: str) -> dict[str, str] | None:
        """The pattern's parameters when ``path`` matches it, else None."""
        want, got = self.pattern.split("/"), path.split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for expected, segment in zip(want, got, strict=True):
            if expected.startswith("{") and expected.endswith("}"):
                if not segment:
                    return None
                params[expected[1:-1]] = urllib.parse.unquote(segment)
            elif expected != segment:
                return None
        return params


async def dispatch(routes: Sequence[Route], request: Request) -> Response:
    """The matching route's answer; 404 for a path no route has, 405 for a method it lacks."""
    methods: set[str] = set()
    for route in routes:
        params = route.match(request.path)
        if params is None:
            continue
        methods.add(route.method)
        # HEAD is answered as GET, without the body (h11 drops it).
        if route.method == request.method or (request.method == "HEAD" and route.method == "GET"):
            return await route.handler(
                Request(request.method, request.path, request.headers, request.body, params))
    if methods:
        return text_response(f"method {request.method} not allowed here\n", status=405)
    return text_response("not found\n", status=404)


class HttpServer:
    """``routes`` served on a host and port (0 picks a free one; see ``port``), over TLS with
    ``ssl_context``."""

    def __init__(self, routes: Sequence[Route], *, host: str, port: int, max_body: int,
                 ssl_context: ssl.SSLContext | None = None, idle_seconds: float = 60.0) -> None:
        self._routes = tuple(routes)
        self._host, self._port = host, port
        self._max_body = max_body
        self._ssl = ssl_context
        self._idle_seconds = idle_seconds
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the HTTP server has not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, ssl=self._ssl, limit=_READ_CHUNK)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await _Exchange(self, reader, writer).run()
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
                h11.ProtocolError):
            pass  # the client went away, went silent or broke the protocol: nothing to answer
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


class _Exchange:
    """One client connection: requests read and answered in turn until either side closes."""

    def __init__(self, server: HttpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._reader, self._writer = reader, writer
        self._conn = h11.Connection(h11.SERVER)

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                await self._refuse_malformed(exc)
                return
            if request is None:
                return
            try:
                response = await dispatch(self._server._routes, request)
            except Exception:
                log.exception("the HTTP handler for %s %s failed", request.method, request.path)
                response = text_response("internal error\n", status=500)
            await self._send(response, close=request.body is None, head=request.method == "HEAD")
            if request.body is None or self._conn.our_state is not h11.DONE:
                await self._linger()
                return
            if self._conn.their_state is not h11.DONE:
                return
            self._conn.start_next_cycle()

    async def _next_event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(self._server._idle_seconds):
                data = await self._reader.read(_READ_CHUNK)
            self._conn.receive_data(data)

    async def _read_request(self) -> Request | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)
        target = event.target.decode("latin-1")
        headers = {name.decode("latin-1"): value for name, value in event.headers}
        body = await self._read_body()
        return Request(event.method.decode("latin-1"), target.partition("?")[0], headers, body)

    async def _read_body(self) -> bytes | None:
        limit, size = self._server._max_body, 0
        chunks: list[bytes] = []
        while True:
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if isinstance(event, h11.ConnectionClosed):
                raise asyncio.IncompleteReadError(b"", None)
            size += len(event.data)
            if size > limit:
                return None
            chunks.append(bytes(event.data))

    async def _send(self, response: Response, *, close: bool, head: bool = False) -> None:
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body)))]
        if close:
            headers.append(("Connection", "close"))
        out = self._conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if not head:  # h11 frames a HEAD's answer as empty
            out += self._conn.send(h11.Data(data=response.body)) or b""
        out += self._conn.send(h11.EndOfMessage()) or b""
        self._writer.write(out)
        await self._writer.drain()

    async def _refuse_malformed(self, exc: h11.RemoteProtocolError) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(text_response(f"bad request: {exc}\n",
                                           status=exc.error_status_hint), close=True)
        await self._linger()

    async def _linger(self) -> None:
        """Stop writing, and read what the client still sends for a moment before closing."""
        if self._writer.can_write_eof():
            self._writer.write_eof()
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            async with asyncio.timeout(_LINGER_SECONDS):
                left = _LINGER_BYTES
                while left > 0 and (data := await self._reader.read(_READ_CHUNK)):
                    left -= len(data)


__all__ = ["HttpServer", "Request", "Response", "Route", "dispatch", "json_response",
           "text_response"]
