"""A real Prometheus (Debian's ``prometheus``) in a process of its own, on a loopback address.

``PrometheusProcess`` is the one runner, for the simulator and for ``tests/prometheus``: a config,
a storage directory, a free port; ``start()`` returns once it answers ``/-/ready``. Its calls
block, so asyncio code runs them in a thread.

``LocalPrometheus`` is the simulator's use of it. It scrapes every pod's metrics each second,
found through a file_sd targets file that follows the fleet (each pod labelled
``namespace="sim"`` and ``pod=<name>``, as Kubernetes discovery labels them), and the controller
reads the load through the same ``PrometheusLoadSource`` it uses in a cluster, with the
``teleport-auth`` preset's own PromQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connbalance.model import PodName
from connbalance.prometheus.connection import Connection
from connbalance.prometheus.source import PrometheusLoadSource

DEBIAN_BINARY = Path("/usr/bin/prometheus")


def find_binary() -> Path | None:
    """The ``prometheus`` on PATH, else Debian's; None when neither is there."""
    found = shutil.which("prometheus")
    if found is not None:
        return Path(found)
    return DEBIAN_BINARY if DEBIAN_BINARY.exists() else None


@dataclass
class PrometheusProcess:
    """One Prometheus with its own storage in ``run_dir``, serving on ``host`` and a free port."""

    run_dir: Path
    host: str
    config: str  # the text of prometheus.yml
    binary: Path | None = None  # None: find_binary()
    web_config: Path | None = None  # --web.config.file, e.g. to serve TLS
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.web_config else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.run_dir / "prometheus.log"

    def start(self) -> None:
        binary = self.binary or find_binary()
        if binary is None or not binary.exists():
            raise RuntimeError(
                f"no prometheus binary ({binary or DEBIAN_BINARY}): "
                "`make system-deps` installs Debian's")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "prometheus.yml"
        config.write_text(self.config)
        for _ in range(3):  # the free port may be taken between choosing and binding
            self.port = free_port(self.host)
            args = [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.run_dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--log.level=warn",
            ]
            if self.web_config:
                args.append(f"--web.config.file={self.web_config}")
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"Prometheus did not start: see {self.log}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Straight to the HTTP API, not through the load source: for waiting on scrapes."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
            return result

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        # The readiness probe only: whoever talks to it verifies the certificate (or not).
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1,
                                            context=unverified) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


class LocalPrometheus:
    """Starts Prometheus on ``host`` and keeps its targets in step with ``targets()``."""

    def __init__(self, *, host: str, targets: Callable[[], Mapping[PodName, str]]) -> None:
        binary = find_binary()
        if binary is None:
            raise RuntimeError("no prometheus binary: `make system-deps` installs Debian's")
        self._dir = Path(tempfile.mkdtemp(prefix="connbalance-sim-prometheus-"))
        self._server = PrometheusProcess(
            run_dir=self._dir, host=host, binary=binary,
            config=CONFIG.format(targets=self._dir / "targets.json"))
        self._targets = targets
        self._follower: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self._server.url

    def load_source(self, *, clock: Callable[[], float]) -> PrometheusLoadSource:
        return PrometheusLoadSource(connection=Connection(url=self.url, timeout_seconds=5.0),
                                    namespace=NAMESPACE, preset="teleport-auth",
                                    max_staleness_seconds=10.0, clock=clock)

    async def start(self) -> None:
        self._write_targets(self._targets())
        await asyncio.to_thread(self._server.start)
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await asyncio.to_thread(self._server.stop)
        shutil.rmtree(self._dir, ignore_errors=True)

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
