"""A proxy in front of the real Prometheus that can be down, stale or talking garbage.

- ``pass``: every request forwarded as it is;
- ``down``: nothing listens on the port (connections are refused, as when Prometheus is gone);
- ``stale``: answers forwarded, but the timestamps the presets ask for (``timestamp(...)``)
  moved ten minutes back, as a Prometheus whose targets stopped being scraped would give them;
- ``garbage``: HTTP 200 with a body that is not JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from connbalance.prometheus.presets import PART_LABEL, TIMESTAMP_PART

Mode = Literal["pass", "down", "stale", "garbage"]
STALE_BY_SECONDS = 600.0


@dataclass(slots=True)
class PrometheusProxy:
    upstream: str  # http://127.0.0.1:PORT of the real Prometheus
    port: int = 0
    mode: Mode = "pass"
    queries: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusProxy:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())
        return self

    def set(self, mode: Mode) -> None:
        """Switch modes; ``down`` closes the listening socket, any other opens it again."""
        self._call(self._switch(mode))

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()

    def _call(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(15)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._listen()
        self.port = int(self._runner.addresses[0][1])

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _switch(self, mode: Mode) -> None:
        if mode == "down" and self._site is not None:
            await self._site.stop()
            self._site = None
        elif mode != "down" and self._site is None:
            await self._listen()
        self.mode = mode

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        self.queries += 1
        # The mode the request arrived in answers it: one read at the end could give a query
        # that arrived stale a fresh answer, if the test moved on meanwhile (which once let a
        # tick see fresh samples and drain while the test said garbage).
        mode = self.mode
        if mode == "garbage":
            return web.Response(status=200, text="<html>502 upstream hiccup</html>\x00\xff",
                                content_type="text/html")
        assert self._session is not None
        body = await request.read()
        async with self._session.request(
            request.method, f"{self.upstream}{request.rel_url}", data=body or None,
            headers={k: v for k, v in request.headers.items()
                     if k.lower() not in ("host", "content-length")},
        ) as answer:
            data = await answer.read()
            status = answer.status
        form = dict(request.query)
        if body and request.content_type == "application/x-www-form-urlencoded":
            form.update(await request.post())  # type: ignore[arg-type]
        if mode == "stale" and "timestamp(" in str(form.get("query", "")):
            data = _aged(data)
        return web.Response(status=status, body=data, content_type="application/json")


def _aged(data: bytes) -> bytes:
    """The answer with every timestamp series' value moved back: a series marked as the
    timestamps part of the one query a read sends, or every series of a timestamps query."""
    answer = json.loads(data)
    result = answer.get("data", {}).get("result", [])
    marked = [i for i in result if i.get("metric", {}).get(PART_LABEL) == TIMESTAMP_PART]
    for item in marked or result:
        stamp, value = item["value"]
        item["value"] = [stamp, str(float(value) - STALE_BY_SECONDS)]
    return json.dumps(answer).encode()
