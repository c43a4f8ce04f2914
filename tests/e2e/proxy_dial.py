"""Teleport's proxy dialling the auth Service, for the test cluster's auth pods.

In the chart's setup each agent's connection reaches a proxy, and the proxy dials
``<release>-auth:3025``: kube-proxy picks one ready endpoint of the Service for that dial, and
when the dial fails the proxy dials again. The test cluster has no kube-proxy (Service addresses
route nowhere), so ``ProxyDial`` does both parts: for each client connection it picks a ready
endpoint of the Service's live EndpointSlices at random, dials it, dials another when the dial is
refused (a pod whose agent steers answers the SYN with a reset), then splices bytes both ways for
the connection's life. When the auth side ends, the client's connection ends with it (what was
already read is passed on first, then a FIN), as the proxy's does; a client no pod takes is reset.

``EndpointFollower`` polls the EndpointSlices (``discovery.k8s.io/v1``, label
``kubernetes.io/service-name``) in a thread of its own and keeps the ready endpoints' addresses
on the named port. Each ``ProxyDial`` runs its own event loop in a thread, so that one can sit in
front of each client fleet and count that fleet's refused dials apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client

# Teleport's proxy gives up on a client after its dials have all failed; five is more than the
# pool has pods, so a client is dropped only when no pod takes it at all.
DEFAULT_DIALS = 5
_DIAL_TIMEOUT_SECONDS = 5.0
_CHUNK = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Endpoints(Protocol):
    @property
    def ready(self) -> tuple[tuple[str, int], ...]:
        """The (address, port) of each ready endpoint now."""
        ...


class EndpointFollower:
    """The ready addresses of a Service's EndpointSlices, polled every ``every`` seconds."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        service: str,
        port_name: str,
        every: float = 0.2,
    ) -> None:
        self._discovery = client.DiscoveryV1Api(api)
        self._namespace, self._service, self._port_name = namespace, service, port_name
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="endpoints")
        self.ready: tuple[tuple[str, int], ...] = ()  # replaced whole: readers need no lock
        self.errors = 0

    def start(self) -> None:
        self.ready = self.read()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def read(self) -> tuple[tuple[str, int], ...]:
        slices = self._discovery.list_namespaced_endpoint_slice(
            self._namespace, label_selector=f"kubernetes.io/service-name={self._service}"
        ).items
        found: list[tuple[str, int]] = []
        for piece in slices:
            ports = [p.port for p in piece.ports or [] if p.name == self._port_name]
            if not ports:
                continue
            for endpoint in piece.endpoints or []:
                # An unset ready condition means ready (the API's own rule).
                if endpoint.conditions is not None and endpoint.conditions.ready is False:
                    continue
                found.extend((address, ports[0]) for address in endpoint.addresses)
        return tuple(sorted(set(found)))

    def _follow(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.ready = self.read()
            except Exception:
                # An API hiccup keeps the last endpoints, as kube-proxy does.
                self.errors += 1


@dataclass(slots=True)
class DialStats:
    """What one proxy did: dials refused and tried again elsewhere, clients it could place
    nowhere, and the connections open now per endpoint address."""

    accepted: int = 0
    dials: int = 0
    refused: int = 0
    redialled: int = 0  # connections that took more than one dial
    gave_up: int = 0  # every dial failed, or no endpoint was ready: the client was reset
    open_by_address: Counter[str] = field(default_factory=Counter)

    def to_wire(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "dials": self.dials,
            "refused": self.refused,
            "redialled": self.redialled,
            "gave_up": self.gave_up,
            "open_by_address": dict(self.open_by_address),
        }


class ProxyDial:
    """A TCP proxy on ``host`` that places each connection on a ready endpoint of ``endpoints``."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        host: str = "127.0.0.1",
        dials: int = DEFAULT_DIALS,
        seed: int = 0,
    ) -> None:
        self._endpoints = endpoints
        self._host = host
        self._dials = dials
        self._rng = random.Random(seed)
        self.stats = DialStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy has not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.address

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def snapshot(self) -> dict[str, Any]:
        """The stats as of now, read on the proxy's own loop."""

        async def read() -> dict[str, Any]:
            return self.stats.to_wire()

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, 0)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pairs):
            task.cancel()
        await asyncio.gather(*self._pairs, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pairs.add(task)
        self.stats.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            placed = await self._dial()
            if placed is None:
                self.stats.gave_up += 1
                return
            address, (up_reader, upstream) = placed
            self.stats.open_by_address[address] += 1
            try:
                await _splice(reader, writer, up_reader, upstream)
            finally:
                self.stats.open_by_address[address] -= 1
        except asyncio.CancelledError:
            # The proxy is stopping. Ended here rather than re-raised: Python 3.11's stream
            # server logs a cancelled handler as an error.
            pass
        finally:
            if upstream is None:
                _reset(writer)  # placed nowhere: the client learns at once
            else:
                # As a Go proxy's Close does: what was already read from one side still reaches
                # the other, then a FIN, so an answer the server finished is never cut short.
                writer.close()
                upstream.close()
            self._pairs.discard(task)

    async def _dial(
        self,
    ) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None:
        """Dial ready endpoints at random, never one that refused this client already."""
        refused: set[tuple[str, int]] = set()
        for attempt in range(self._dials):
            choices = [e for e in self._endpoints.ready if e not in refused]
            if not choices:
                return None
            endpoint = self._rng.choice(choices)
            self.stats.dials += 1
            try:
                async with asyncio.timeout(_DIAL_TIMEOUT_SECONDS):
                    streams = await asyncio.open_connection(*endpoint)
            except (OSError, TimeoutError):
                self.stats.refused += 1
                refused.add(endpoint)
                continue
            if attempt:
                self.stats.redialled += 1
            return endpoint[0], streams
        return None


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side ends (the caller then ends both)."""
    copies = [
        asyncio.create_task(_copy(reader, up_writer)),
        asyncio.create_task(_copy(up_reader, writer)),
    ]
    try:
        await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in copies:
            task.cancel()
        await asyncio.gather(*copies, return_exceptions=True)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset, not a FIN: the client learns at once that no pod took it."""
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()
