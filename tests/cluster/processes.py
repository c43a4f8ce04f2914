"""A pod's containers as local processes, and their readiness probes, for the test kubelet."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESTART_DELAY_SECONDS = 1.0


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Probe:
    """Readiness from an HTTP GET (``url``) or TCP connect (``url`` ``tcp://ip:port``) probe,
    counted as the kubelet does."""

    url: str
    period: float
    success_threshold: int
    failure_threshold: int
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    ready: bool = False

    def tick(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.period
        try:
            if self.url.startswith("tcp://"):
                host, port = self.url.removeprefix("tcp://").rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1.0).close()
                ok = True
            else:
                with urllib.request.urlopen(self.url, timeout=1.0) as response:
                    ok = 200 <= response.status < 400
        except OSError:
            ok = False
        self.successes, self.failures = (self.successes + 1, 0) if ok else (0, self.failures + 1)
        if ok and self.successes >= self.success_threshold:
            self.ready = True
        if not ok and self.failures >= self.failure_threshold:
            self.ready = False


@dataclass(slots=True)
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: Path
    restart_policy: str
    probe: Probe | None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: str = ""
    exit_code: int | None = None
    restart_at: float = 0.0

    def start(self) -> None:
        with self.log.open("ab") as log:
            # A session of its own: signals reach the whole process group.
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.started_at, self.exit_code = now(), None

    def poll(self) -> None:
        """Notice an exit; restart as the pod's restartPolicy says, one second later."""
        if self.process is not None and self.process.poll() is not None:
            self.exit_code, self.process = self.process.returncode, None
            if self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and self.exit_code != 0
            ):
                self.restart_at = time.monotonic() + RESTART_DELAY_SECONDS
        if self.process is None and self.restart_at and time.monotonic() >= self.restart_at:
            self.restart_at, self.restarts = 0.0, self.restarts + 1
            if self.probe is not None:
                self.probe.ready = False
            self.start()
        if self.process is not None and self.probe is not None:
            self.probe.tick()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    @property
    def ready(self) -> bool:
        return self.process is not None and (self.probe is None or self.probe.ready)

    def status(self, image: str) -> dict[str, Any]:
        started = {"startedAt": self.started_at}
        state: dict[str, Any] = {"running": started}
        if self.process is None:
            state = {
                "terminated": {**started, "exitCode": self.exit_code or 0, "finishedAt": now()}
            }
        return {
            "name": self.name, "image": image, "imageID": "", "ready": self.ready,
            "restartCount": self.restarts, "started": self.process is not None,
            "containerID": f"process://{self.process.pid}" if self.process else "",
            "state": state,
        }  # fmt: skip


def stop_processes(containers: list[Container], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds for them to exit, SIGKILL for the rest."""
    for container in containers:
        container.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(
        c.process is not None and c.process.poll() is None for c in containers
    ):
        time.sleep(0.1)
    for container in containers:
        container.signal(signal.SIGKILL)
        if container.process is not None:
            container.process.wait()
