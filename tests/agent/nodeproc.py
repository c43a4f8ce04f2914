"""``connbalance node-agent`` as a process for the cluster tests, as a DaemonSet would run it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.agent.nodestatus import node_agent_get, node_agent_request
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


class NodeAgentProcess:
    """``connbalance node-agent`` for ``node``, its HTTP port read from its log."""

    def __init__(
        self, *, env: Mapping[str, str], node: str, namespace: str, state: Path, log: Path,
        netns_from: str, listen: str = "127.0.0.1:0",
    ) -> None:
        self.log = log
        env = {**env, "PYTHONPATH": str(ROOT / "operator")}
        env.pop("NODE_NAME", None)
        # Appended to: a restarted node agent's lines come after its predecessor's.
        offset = log.stat().st_size if log.exists() else 0
        self._out = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connbalance.cli.main", "node-agent", "--node", node,
             "--netns-from", netns_from, "--listen", listen, "--state-dir", str(state),
             "--namespace", namespace, "--loop", "asyncio"],
            stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
        found = eventually(
            lambda: re.search(r"HTTP on 127\.0\.0\.1:(\d+)", log.read_text()[offset:])
            or self.proc.poll() is not None,
            what="the node agent up", timeout=60,
        )  # fmt: skip
        assert self.proc.poll() is None, log.read_text()
        self.port = int(found.group(1))

    def get(self, path: str) -> Any:
        return node_agent_get(f"http://127.0.0.1:{self.port}", path)

    def request(self, namespace: str, pod: str, request_id: str) -> dict[str, Any] | None:
        return node_agent_request(f"http://127.0.0.1:{self.port}", namespace, pod, request_id)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self._out.close()
