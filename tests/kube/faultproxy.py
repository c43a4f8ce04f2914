"""A fault proxy in front of the real API server, for faults the API server does not make on cue.

Plain HTTP on loopback in front, the API server behind it over TLS with the administrator's client
certificate; everything is forwarded as it comes, watches streamed chunk by chunk. Rules, checked
in order, pick requests by method, path, query and body, and for a number of them:
- ``conflict``: answer 409 Conflict with the API server's own Status body;
- ``gone``: answer a watch with one ERROR event carrying 410 Expired, then end it, as the API
  server does when the resource version asked for is too old;
- ``hold``: keep the request until ``release()`` (or for ever), then forward it.

Every request is recorded (method, path, query, status, the head of the body), so a test can ask
what a client did: which pods it patched, how often, through which proxy. ``kubeconfig()`` writes
a kubeconfig pointing at the proxy, for the operator under test.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web

Action = Literal["conflict", "gone", "hold"]
# Not forwarded either way: they describe one hop, not the request.
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
        "proxy-connection", "content-length"}


@dataclass(slots=True)
class Rule:
    action: Action
    method: str  # "PATCH", or "*" for any
    path: str  # a regular expression the whole path must match
    query: str = ""  # a substring of the query string, e.g. "watch=true"
    body: str = ""  # a substring of the request body, e.g. "connbalance.io/drain"
    times: int = 1  # how many requests it answers; then it is spent
    hits: int = 0
    released: asyncio.Event | None = None

    def matches(self, method: str, path: str, query: str, body: bytes) -> bool:
        return (
            self.hits < self.times
            and self.method in ("*", method)
            and re.fullmatch(self.path, path) is not None
            and self.query in query
            and self.body.encode() in body
        )


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    query: str
    status: int
    body: str  # the first 2 KiB of the request body
    injected: str = ""  # the rule's action when a rule answered


@dataclass(slots=True)
class FaultProxy:
    upstream: str  # https://127.0.0.1:PORT
    pki: Path  # holds ca.crt, admin.crt, admin.key
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault proxy")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        for rule in self.rules:
            self.release(rule)
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()

    def add(self, rule: Rule) -> Rule:
        if rule.action == "hold":
            rule.released = asyncio.Event()
        with self._lock:
            self.rules.append(rule)
        return rule

    def release(self, rule: Rule) -> None:
        if rule.released is not None:
            self._loop.call_soon_threadsafe(rule.released.set)

    def requests(self, method: str, path: str, body: str = "") -> list[Seen]:
        """What was asked so far: method, a regular expression over the path, a body substring."""
        with self._lock:
            seen = list(self.seen)
        return [s for s in seen if s.method == method and re.fullmatch(path, s.path)
                and body in s.body]

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig naming the proxy (which holds the credentials, so none are in it)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
        }))
        return path

    async def _start(self) -> None:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Watches and held requests stay open to the end: cut them, do not wait for them.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _rule_for(self, method: str, path: str, query: str, body: bytes) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query, body):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, request: web.Request, body: bytes, status: int, injected: str = "") -> None:
        with self._lock:
            self.seen.append(Seen(method=request.method, path=request.path,
                                  query=request.query_string, status=status,
                                  body=body[:2048].decode(errors="replace"), injected=injected))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rule = self._rule_for(request.method, request.path, request.query_string, body)
        if rule is not None and rule.action == "conflict":
            self._record(request, body, 409, "conflict")
            return web.json_response(_status(409, "Conflict", _conflict_message(request.path)),
                                     status=409)
        if rule is not None and rule.action == "gone":
            self._record(request, body, 200, "gone")
            event = {"type": "ERROR", "object": _status(
                410, "Expired", "too old resource version: 1 (2)")}
            return web.Response(text=json.dumps(event) + "\n", content_type="application/json")
        if rule is not None and rule.released is not None:
            await rule.released.wait()
        return await self._forward(request, body, injected="hold" if rule else "")

    async def _forward(self, request: web.Request, body: bytes, *,
                       injected: str) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = f"{self.upstream}{request.rel_url}"
        # No Content-Type of aiohttp's own (octet-stream) where the client sent none: the
        # API server refuses that one with 415, and takes the body as JSON without any.
        async with self._session.request(request.method, url, headers=headers,
                                         data=body or None,
                                         skip_auto_headers=("Content-Type",)) as upstream:
            self._record(request, body, upstream.status, injected)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # either side hung up mid-stream (a watch ending, a client killed)
            return response


def _status(code: int, reason: str, message: str) -> dict[str, object]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _conflict_message(path: str) -> str:
    name = path.rstrip("/").split("/")[-1]
    if name == "status":
        name = path.rstrip("/").split("/")[-2]
    return (f'Operation cannot be fulfilled on "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again")
