"""Start and stop the test cluster: etcd, kube-apiserver, kube-controller-manager, the test kubelet
and Prometheus, each a background process on loopback, all state under one run directory.

``make cluster-up`` / ``make cluster-down`` and the pytest ``cluster`` fixture both use
:class:`Cluster`. From a shell: ``python -m tests.cluster.cluster up|down [--run-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import build

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Pods take /20s of 127.1.0.0/16 (see kubelet.py); its last /20 holds the Services' cluster IPs,
# which nothing routes: an address that is never used still stays on loopback.
SERVICE_CIDR = "127.1.240.0/20"
SERVICE_IP = "127.1.240.1"
# Controllers that need real nodes, clouds or volumes, and what this cluster cannot give them.
DISABLED_CONTROLLERS = (
    "node-ipam-controller",  # pod CIDRs per node: the test kubelet picks loopback addresses itself
    "node-lifecycle-controller",  # would evict pods when a node's kubelet goes quiet
    "taint-eviction-controller",
    "device-taint-eviction-controller",
    "persistentvolume-attach-detach-controller",  # no volumes are attached anywhere
    "certificatesigningrequest-signing-controller",  # needs the CA key; nothing here signs CSRs
    "bootstrap-signer-controller",
    "token-cleaner-controller",
)
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """One test cluster. ``start()`` returns once the API server answers, the controllers run,
    the nodes are Ready and Prometheus is up; ``stop()`` ends every process it started."""

    run_dir: Path
    nodes: int = 2
    bin_dir: Path = field(default_factory=build.bin_dir)
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    argvs: dict[str, list[str]] = field(default_factory=dict)  # each part's command, to restart
    # An audit policy for the API server (its events go to logs/audit.log, one JSON per line),
    # and Prometheus's scrape interval: the operator's benchmark sets both.
    audit_policy: Path | None = None
    scrape_interval: str = "1s"

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "logs" / "audit.log"

    @property
    def kubeconfig(self) -> Path:
        """The administrator's kubeconfig (user kubernetes-admin, group system:masters)."""
        return self.run_dir / "pki" / "admin.kubeconfig"

    @property
    def kubectl(self) -> Path:
        """A kubectl of the API server's own version."""
        return self.bin_dir / "kubectl"

    @property
    def api_server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for a command using this cluster: KUBECONFIG, kubectl on PATH."""
        path = f"{self.bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def run_kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), *args],
            input=stdin,
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.bin_dir = build.ensure_built()
        if (self.run_dir / "state.json").exists():
            raise RuntimeError(f"a cluster may still run from {self.run_dir}: stop it first")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        (self.run_dir / "logs").mkdir(parents=True)
        self.ports = {
            name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "prometheus")
        }
        pki = self.run_dir / "pki"
        subprocess.run(
            [
                str(self.bin_dir / "clusterbin"),
                "pki",
                f"--dir={pki}",
                f"--server={self.api_server}",
                f"--service-ip={SERVICE_IP}",
            ],
            check=True,
        )
        try:
            self.start_control_plane(pki)
            self.spawn(
                "kubelet",
                [
                    sys.executable,
                    "-m",
                    "tests.cluster.kubelet",
                    f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
                    f"--run-dir={self.run_dir}",
                    f"--nodes={self.nodes}",
                ],
            )
            self.wait("nodes Ready", self.nodes_ready)
            self.start_prometheus(pki)
        except BaseException:
            self.stop()
            raise
        print(
            f"cluster: up in {time.monotonic() - started:.1f}s, state in {self.run_dir}", flush=True
        )

    def start_control_plane(self, pki: Path) -> None:
        etcd = f"http://127.0.0.1:{self.ports['etcd']}"
        self.spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-url={etcd}",
                f"--listen-peer-url=http://127.0.0.1:{self.ports['etcd-peer']}",
            ],
        )
        self.wait("etcd", lambda: b"true" in self.get(f"{etcd}/health"))
        self.spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--profiling=false",
                *self._audit_flags(),
            ],
        )
        self.wait("kube-apiserver", lambda: self.get(f"{self.api_server}/readyz") == b"ok")
        # Prometheus reads pods as its own user, with only what this role grants (RBAC is real).
        self.run_kubectl("apply", "-f", str(HERE / "prometheus-rbac.yaml"))
        self.spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={pki / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--controllers=*," + ",".join(f"-{name}" for name in DISABLED_CONTROLLERS),
                "--concurrent-deployment-syncs=5",
                "--concurrent-replicaset-syncs=5",
            ],
        )
        # The serviceaccount controller made the default account: the controllers run.
        self.wait(
            "kube-controller-manager",
            lambda: (
                self.run_kubectl(
                    "get", "serviceaccount", "default", "-n", "default", check=False
                ).returncode
                == 0
            ),
        )

    def _audit_flags(self) -> list[str]:
        if self.audit_policy is None:
            return []
        return [f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json"]  # fmt: skip

    def start_prometheus(self, pki: Path) -> None:
        binary = self.bin_dir / "prometheus"
        config = self.run_dir / "prometheus.yml"
        template = (HERE / "prometheus.yml.in").read_text()
        template = template.replace("@KUBECONFIG@", str(pki / "prometheus.kubeconfig"))
        config.write_text(template.replace("@SCRAPE_INTERVAL@", self.scrape_interval))
        self.spawn(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.run_dir / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
            ],
        )
        self.wait("prometheus", lambda: b"Ready" in self.get(f"{self.prometheus_url}/-/ready"))

    def nodes_ready(self) -> bool:
        out = self.run_kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
            check=False,
        ).stdout.split()
        return len(out) >= self.nodes and all(status == "True" for status in out)

    def spawn(self, name: str, argv: list[str]) -> None:
        log = (self.run_dir / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        self.pids[name] = process.pid
        self.argvs[name] = argv
        self.save()

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM, SIGKILL after 15 s) and start it again with the same
        flags, port and etcd, as an upgrade does; only for a cluster this process started."""
        if "kube-apiserver" not in self.argvs:
            raise RuntimeError("restart_apiserver: this process did not start the cluster")
        pid = self.pids["kube-apiserver"]
        self.terminate(pid)
        for process in [p for p in self.processes if p.pid == pid]:
            process.wait()
            self.processes.remove(process)
        self.spawn("kube-apiserver", self.argvs["kube-apiserver"])
        self.wait("kube-apiserver", lambda: self.get(f"{self.api_server}/readyz") == b"ok")

    def wait(self, what: str, ready: Callable[[], bool]) -> None:
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    name = next(n for n, pid in self.pids.items() if pid == process.pid)
                    tail = (self.run_dir / "logs" / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                if ready():
                    print(f"cluster: {what} after {time.monotonic() - started:.1f}s", flush=True)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"{what} not ready after {START_TIMEOUT:.0f}s; logs in {self.run_dir}/logs"
        )

    def get(self, url: str) -> bytes:
        context = None
        if url.startswith("https:"):
            pki = self.run_dir / "pki"
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bytes(response.read())

    def save(self) -> None:
        state = {"ports": self.ports, "pids": self.pids, "bin_dir": str(self.bin_dir)}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=2))

    # -- stop --------------------------------------------------------------------------------

    @classmethod
    def load(cls, run_dir: Path) -> Cluster:
        state = json.loads((run_dir / "state.json").read_text())
        return cls(
            run_dir=run_dir,
            ports=state["ports"],
            pids=state["pids"],
            bin_dir=Path(state["bin_dir"]),
        )

    def stop(self) -> None:
        """SIGTERM each process (the kubelet first, so it stops its pods), SIGKILL after 15s."""
        for name in ("kubelet", "prometheus", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = self.pids.get(name)
            if pid is not None and self.owns(pid):
                self.terminate(pid)
        for process in self.processes:
            process.wait()
        (self.run_dir / "state.json").unlink(missing_ok=True)

    def owns(self, pid: int) -> bool:
        """Whether the PID is still ours: it names our run directory (PIDs get reused)."""
        try:
            return str(self.run_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or any(
                p.pid == pid and p.poll() is None for p in self.processes
            )
        except OSError:
            return False

    def terminate(self, pid: int) -> None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and self.alive(pid):
            time.sleep(0.1)
        if self.alive(pid):
            os.killpg(pid, signal.SIGKILL)

    def alive(self, pid: int) -> bool:
        for process in self.processes:
            if process.pid == pid:
                return process.poll() is None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"


def default_run_dir() -> Path:
    return build.CACHE / "cluster-run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start or stop the test cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if args.action == "down":
        if not (run_dir / "state.json").exists():
            print(f"cluster: nothing runs from {run_dir}")
            return 0
        Cluster.load(run_dir).stop()
        print("cluster: stopped")
        return 0
    cluster = Cluster(run_dir=run_dir, nodes=args.nodes)
    cluster.start()
    print(f"KUBECONFIG={cluster.kubeconfig}")
    print(f"PROMETHEUS={cluster.prometheus_url}")
    print(f"KUBECTL={cluster.kubectl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
