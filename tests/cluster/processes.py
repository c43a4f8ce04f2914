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
HOOK_OVERRUN_SECONDS = 2.0  # the kubelet's one-off extension when a preStop hook overruns


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
    pre_stop: list[str] | None = None  # the preStop hook's command (exec, or sleep as `sleep N`)
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

    def start_pre_stop(self) -> subprocess.Popen[bytes] | None:
        """The preStop hook, as a process beside the container's (None: no hook, or it could not
        start, which the kubelet reports and goes on to SIGTERM)."""
        if not self.pre_stop:
            return None
        try:
            with self.log.open("ab") as log:
                return subprocess.Popen(
                    self.pre_stop, env=self.env, cwd=self.cwd, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        except OSError:
            return None

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


def stop_processes(containers: list[Container], grace: float, *, hooks: bool = False) -> None:
    """Each container's preStop hook (with ``hooks``) then SIGTERM, up to ``grace`` seconds in
    all for them to exit, SIGKILL for the rest. As the kubelet does it: a container without a
    hook gets SIGTERM at once, one with a hook when its hook ends; a hook still running when the
    grace period ends is killed, and the containers get two seconds more."""
    deadline = time.monotonic() + grace
    hooked: list[tuple[Container, subprocess.Popen[bytes]]] = []
    for container in containers:
        running = container.process is not None and container.process.poll() is None
        hook = container.start_pre_stop() if hooks and running else None
        if hook is None:
            container.signal(signal.SIGTERM)
        else:
            hooked.append((container, hook))

    def waiting() -> bool:
        alive = any(c.process is not None and c.process.poll() is None for c in containers)
        return time.monotonic() < deadline and (alive or bool(hooked))

    while waiting():
        for container, hook in [pair for pair in hooked if pair[1].poll() is not None]:
            hooked.remove((container, hook))
            container.signal(signal.SIGTERM)
        time.sleep(0.1)
    if hooked:
        deadline = time.monotonic() + HOOK_OVERRUN_SECONDS
        for container, hook in hooked:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hook.pid, signal.SIGKILL)
            hook.wait()
            container.signal(signal.SIGTERM)
        hooked.clear()
        while waiting():
            time.sleep(0.1)
    for container in containers:
        container.signal(signal.SIGKILL)
        if container.process is not None:
            container.process.wait()
