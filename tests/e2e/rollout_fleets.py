"""The two client fleets of the Teleport rollout test, each a process of its own behind its own
proxy: grpcio's (``python -m connbalance_sim.clients``) and grpc-go's (tests/goclients). Both
take the same flags and print the same JSON report lines, with a ``retry`` group (the pinned
retry policy, ``connbalance_sim.retrypolicy``) and a ``failfast`` group (none).

``Fleet`` keeps the last report line; ``delta`` subtracts two reports, so a run's failed calls
are counted from its own start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connbalance_sim.retrypolicy import service_config_json

Report = dict[str, Any]
_GAUGES = ("clients", "streams", "servers", "t", "done", "per_client")
# Each client pings once a second and reconnects with a 100 ms base backoff (the bench's): the
# redialling proxy, not the client's backoff, is what steers here.
_COMMON = ["--ping", "1", "--backoff-ms", "100", "--report", "0.5", "--ramp", "4",
           "--lifetime", "1800"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class FleetSpec:
    name: str  # "grpcio" or "go"
    count: int
    failfast: int

    def command(self, *, target: str, go_binary: Path | None) -> list[str]:
        sizes = ["--target", target, "--count", str(self.count), "--failfast", str(self.failfast)]
        if self.name == "go":
            if go_binary is None:
                raise ValueError("the go fleet needs its binary (tests.goclients.build)")
            # One JSON line per failed call on stderr: when, which group, which status.
            config = ["--service-config", service_config_json(), "--log-failures"]
            return [str(go_binary), *sizes, *_COMMON, *config]
        return [sys.executable, "-m", "connbalance_sim.clients", *sizes, *_COMMON]


class Fleet:
    """One fleet process, and the last report line it printed."""

    def __init__(
        self, spec: FleetSpec, *, target: str, log: Path, go_binary: Path | None = None
    ) -> None:
        self.spec = spec
        self.log = log  # the process's stderr
        self._command = spec.command(target=target, go_binary=go_binary)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.latest: Report = {}

    def start(self) -> None:
        with self.log.open("w") as stderr:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self._reader = threading.Thread(target=self._read, daemon=True, name=self.spec.name)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.latest = json.loads(line)

    def failures(self) -> list[dict[str, Any]]:
        """The failed calls the go fleet logged (``t``, ``client``, ``group``, ``code``,
        ``message``); none for grpcio's, which does not log them."""
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "code" in entry:
                    found.append(entry)
        return found

    def stop(self) -> Report:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        return self.latest


def delta(after: Report, before: Report) -> Report:
    """``after - before``, field by field, for counters and their maps (status code -> count);
    gauges such as ``streams`` and ``servers`` are kept as ``after`` has them."""
    out: Report = {}
    for key, value in after.items():
        old = before.get(key)
        if key in _GAUGES or isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int | float):
            out[key] = value - (old if isinstance(old, int | float) else 0)
        elif isinstance(value, dict):
            out[key] = delta(value, old if isinstance(old, dict) else {})
            if key.endswith("_by_code"):
                out[key] = {code: n for code, n in out[key].items() if n}
        else:
            out[key] = value
    return out
