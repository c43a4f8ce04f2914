"""A real Prometheus for the simulator (Debian's ``prometheus``), when one is installed.

It scrapes every pod's metrics each second, found through a file_sd targets file that follows
the fleet (each pod labelled ``namespace="sim"`` and ``pod=<name>``, as Kubernetes discovery
labels them), and the controller reads the load through the same ``PrometheusLoadSource`` it
uses in a cluster, with the ``teleport-auth`` preset's own PromQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp

from connbalance.model import PodName
from connbalance.prometheus.connection import Connection
from connbalance.prometheus.source import PrometheusLoadSource

NAMESPACE = "sim"
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
- job_name: sim
  file_sd_configs:
  - files: ["{targets}"]
    refresh_interval: 1s
"""


def binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)


class LocalPrometheus:
    """Starts Prometheus on ``host`` and keeps its targets in step with ``targets()``."""

    def __init__(self, *, host: str, targets: Callable[[], Mapping[PodName, str]]) -> None:
        found = binary()
        if found is None:
            raise RuntimeError("no prometheus binary: `make system-deps` installs Debian's")
        self._binary = found
        self._host = host
        self._targets = targets
        self._dir = Path(tempfile.mkdtemp(prefix="connbalance-sim-prometheus-"))
        self._process: asyncio.subprocess.Process | None = None
        self._follower: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def load_source(self, *, clock: Callable[[], float]) -> PrometheusLoadSource:
        return PrometheusLoadSource(connection=Connection(url=self.url, timeout_seconds=5.0),
                                    namespace=NAMESPACE, preset="teleport-auth",
                                    max_staleness_seconds=10.0, clock=clock)

    async def start(self) -> None:
        self._write_targets(self._targets())
        (self._dir / "prometheus.yml").write_text(
            CONFIG.format(targets=self._dir / "targets.json"))
        for _ in range(3):  # the free port may be taken between choosing and binding
            self.port = _free_port(self._host)
            with (self._dir / "prometheus.log").open("ab") as log:
                self._process = await asyncio.create_subprocess_exec(
                    self._binary, f"--config.file={self._dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address={self._host}:{self.port}", "--log.level=warn",
                    stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
            if await self._ready():
                self._follower = asyncio.create_task(self._follow())
                return
            await self._stop_process()
        raise RuntimeError(f"Prometheus did not start: see {self._dir / 'prometheus.log'}")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self._stop_process()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _stop_process(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), timeout=15)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def _ready(self, timeout: float = 30.0) -> bool:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while loop.time() < deadline and self._process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(f"{self.url}/-/ready") as answer:
                        if answer.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False

    async def _follow(self) -> None:
        """Rewrite the targets file whenever the fleet's pods change (Prometheus notices)."""
        written = dict(self._targets())
        while True:
            await asyncio.sleep(0.1)
            now = dict(self._targets())
            if now != written:
                self._write_targets(now)
                written = now

    def _write_targets(self, targets: Mapping[PodName, str]) -> None:
        groups = [{"targets": [address], "labels": {"namespace": NAMESPACE, "pod": str(pod)}}
                  for pod, address in sorted(targets.items())]
        path = self._dir / "targets.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        temporary.rename(path)  # atomic: Prometheus never reads half a file


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
