"""Every pod's load, kept in the bench's process, and served to Prometheus at each pod's address.

A thousand pod processes will not fit here, so the pods run ``sleep`` and one exporter answers
every pod address's scrape with that pod's figure (``teleport_connected_resources``): it listens
on the wildcard address and tells pods apart by the local address a scrape arrived at.

The loads move as a pool's connections would:
- a pod that goes (deleted, or terminating) hands its connections to its Deployment's other live
  pods, at random, as reconnecting clients land behind a flow hash; a new pod starts at 0, so a
  rolling restart leaves the pool skewed;
- a new drain request on a pod (its ``connbalance.io/drain`` annotation, each id acted on once,
  the agents' dedupe) moves ``count`` of its connections to the least loaded live pods of its
  Deployment that are not shedding themselves, as steered reconnects land.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from connbalance.controller.state import step_of

DRAIN = "connbalance.io/drain"
METRIC = "teleport_connected_resources"


@dataclass(frozen=True, slots=True)
class SeenPod:
    uid: str
    name: str
    ip: str
    group: str  # the Deployment's ``app`` label
    live: bool  # has an address and is not terminating
    drain: dict[str, Any] | None


def seen_pod(body: Any) -> SeenPod:
    """One pod of a kubernetes client list, as the model needs it."""
    meta, status = body.metadata, body.status
    raw = (meta.annotations or {}).get(DRAIN)
    try:
        drain = json.loads(raw) if raw else None
    except ValueError:
        drain = None
    ip = status.pod_ip or ""
    return SeenPod(uid=meta.uid, name=meta.name, ip=ip, group=(meta.labels or {}).get("app", ""),
                   live=bool(ip) and meta.deletion_timestamp is None and status.phase == "Running",
                   drain=drain if isinstance(drain, dict) else None)  # fmt: skip


@dataclass
class LoadModel:
    per_pod: int  # connections each pod holds when the pool is first made
    seed: int = 1
    filling: bool = True  # while the pool is first made, a new pod gets per_pod
    loads: dict[str, int] = field(default_factory=dict)  # by pod uid
    acted: set[str] = field(default_factory=set)  # drain request ids, as the agents keep them
    moved_by_drains: int = 0
    _pods: dict[str, SeenPod] = field(default_factory=dict)
    _by_ip: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def sync(self, pods: list[SeenPod]) -> None:
        with self._lock:
            live = {p.uid: p for p in pods if p.live}
            gone = [u for u in self.loads if u not in live]
            for uid in live:
                if uid not in self.loads:
                    self.loads[uid] = self.per_pod if self.filling else 0
            for uid in gone:
                group = self._pods[uid].group
                self._spread(self.loads.pop(uid), self._members(group, live, skip=uid))
            self._pods = live
            self._by_ip = {p.ip: uid for uid, p in live.items()}
            for pod in live.values():
                self._act(pod, live)

    def _members(self, group: str, live: dict[str, SeenPod], *, skip: str) -> list[str]:
        return [u for u, p in live.items() if p.group == group and u != skip]

    def _spread(self, count: int, onto: list[str]) -> None:
        for _ in range(count if onto else 0):
            self.loads[self._rng.choice(onto)] += 1

    def _act(self, pod: SeenPod, live: dict[str, SeenPod]) -> None:
        drain = pod.drain
        if drain is None or not isinstance(drain.get("id"), str) or drain["id"] in self.acted:
            return
        self.acted.add(drain["id"])
        step = step_of(drain["id"])
        shedding = {u for u, p in live.items()
                    if p.drain and step_of(str(p.drain.get("id"))) == step}  # fmt: skip
        onto = [u for u in self._members(pod.group, live, skip=pod.uid) if u not in shedding]
        count = min(int(drain.get("count") or 0), self.loads.get(pod.uid, 0))
        if not onto:
            return
        self.loads[pod.uid] -= count
        self.moved_by_drains += count
        for _ in range(count):
            target = min(onto, key=lambda u: self.loads[u])
            self.loads[target] += 1

    def text_for(self, ip: str) -> str | None:
        with self._lock:
            uid = self._by_ip.get(ip)
            if uid is None:
                return None
            return f'{METRIC}{{type="node"}} {self.loads[uid]}\n'

    def groups(self) -> dict[str, dict[str, int]]:
        """Each Deployment's pods and their loads, by pod name."""
        with self._lock:
            found: dict[str, dict[str, int]] = {}
            for uid, pod in self._pods.items():
                found.setdefault(pod.group, {})[pod.name] = self.loads.get(uid, 0)
            return found


@dataclass
class Exporter:
    """One HTTP server on every address at ``port``, answering ``/metrics`` per pod address."""

    model: LoadModel
    port: int
    scrapes: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def start(self) -> Exporter:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(15)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.port, reuse_address=True).start()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        text = self.model.text_for(sockname[0]) if sockname else None
        if text is None:
            return web.Response(status=404, text="no such pod\n")
        return web.Response(text=text, content_type="text/plain")
