"""A standalone Prometheus (Debian's /usr/bin/prometheus) and exporter processes posing as pods.

Prometheus discovers the pods through ``file_sd_configs``: each pod is a target whose
``__meta_kubernetes_*`` labels mimic Kubernetes service discovery, and the scrape config relabels
them into ``namespace``, ``pod`` and the pod's own labels exactly as the common ``kubernetes-pods``
job does. Everything listens on 127.0.5.0/24 (this area's loopback range), ports chosen free.
The Prometheus process itself is run by the simulator's runner (``connbalance_sim.prom``).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connbalance_sim.prom import PrometheusProcess

PROMETHEUS = Path("/usr/bin/prometheus")
REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.5.1"
# Pods get 127.0.5.10 and up, one address each, as pods get their own IPs.
_ADDRESSES = (f"127.0.5.{n}" for n in itertools.cycle(range(10, 250)))

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
- job_name: pods
  file_sd_configs:
  - files: ["{targets}/*.json"]
    refresh_interval: 1s
  relabel_configs:
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
  - source_labels: [__meta_kubernetes_pod_container_name]
    target_label: container
  # The older chart convention, for a pod label other than "pod".
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: kubernetes_pod_name
  - regex: __meta_kubernetes_pod_label_(.+)
    action: labelmap
"""


class PrometheusServer(PrometheusProcess):
    """The simulator's Prometheus runner, configured as this area's: pods found through files in
    ``targets`` (see ``publish``), relabelled as Kubernetes discovery would."""

    def __init__(self, *, run_dir: Path, web_config: Path | None = None) -> None:
        super().__init__(run_dir=run_dir, host=HOST, binary=PROMETHEUS, web_config=web_config,
                         config=CONFIG.format(targets=run_dir / "targets"))

    @property
    def targets(self) -> Path:
        return self.run_dir / "targets"

    def start(self) -> None:
        self.targets.mkdir(parents=True, exist_ok=True)
        super().start()


@dataclass
class Exporter:
    """One pod: an exporter process on its own loopback address, its values in a state file."""

    pod: str
    namespace: str
    state: Path
    labels: dict[str, str] = field(default_factory=dict)
    container: str = "teleport"
    address: str = field(default_factory=lambda: next(_ADDRESSES))
    port: int = 0
    process: subprocess.Popen[str] | None = None

    def set(self, **values: Any) -> None:
        """Replace what the next scrape sees (``resources``, ``open_fds``, ``age``)."""
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        os.replace(tmp, self.state)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.prometheus.exporter",
             "--address", self.address, "--state", str(self.state), "--watch-stdin"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"exporter for {self.pod} did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def target(self) -> dict[str, Any]:
        labels = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.pod,
            "__meta_kubernetes_pod_container_name": self.container,
        }
        for key, value in self.labels.items():
            sanitized = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
            labels[f"__meta_kubernetes_pod_label_{sanitized}"] = value
        return {"targets": [f"{self.address}:{self.port}"], "labels": labels}


def publish(server: PrometheusServer, name: str, exporters: list[Exporter]) -> None:
    """Write (or with no exporters, remove) one file_sd file; Prometheus follows the change."""
    path = server.targets / f"{name}.json"
    if not exporters:
        path.unlink(missing_ok=True)
        return
    tmp = server.run_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps([e.target() for e in exporters]))
    os.replace(tmp, path)


def wait_until(
    server: PrometheusServer,
    promql: str,
    done: Callable[[dict[str, str]], bool],
    timeout: float = 20.0,
) -> None:
    """Until ``done({pod: value as text})`` holds for what ``promql`` returns (bounded)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        seen = {s["metric"].get("pod", ""): s["value"][1] for s in server.query(promql)}
        if done(seen):
            return
        time.sleep(0.2)
    raise AssertionError(f"{promql} never reached the expected state; last {seen}")
