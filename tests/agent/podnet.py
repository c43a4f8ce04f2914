"""Pods' networks for the node agent's tests: an echo server in a namespace of the test's own,
in a real cgroup named for a pod uid (as the kubelet names them), and clients connected to it.

The cgroup is real (``/sys/fs/cgroup/pids/kubepods/besteffort/pod<uid>`` on a cgroup v1 pids
hierarchy, or the same path under cgroup2), so ``/proc/<pid>/cgroup`` of the server names the
pod and the node agent's cgroup strategy finds it as it would on a node.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.netns import inside

ROOT = Path(__file__).resolve().parents[2]
_POD_CGROUP = Path("kubepods") / "besteffort"


@contextlib.contextmanager
def echo_server(host: str, port: int, *, netns: str | None) -> Iterator[subprocess.Popen[str]]:
    """The echo server on ``host:port``, in namespace ``netns`` (None: the test's own)."""
    argv = [sys.executable, "-m", "tests.agent.echoserver", host, str(port)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"}
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _cgroup_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, where, kind, options, *_ = line.split()
        if kind == "cgroup" and "pids" in options.split(","):
            return Path(where)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, where, kind, *_ = line.split()
        if kind == "cgroup2":
            return Path(where)
    return None


@contextlib.contextmanager
def pod_cgroup(uid: str, pid: int) -> Iterator[Path]:
    """Process ``pid`` in a cgroup named for pod ``uid``, as the kubelet (cgroupfs) names it."""
    root = _cgroup_root()
    if root is None:
        pytest.skip("no cgroup hierarchy to make a pod's cgroup in")
    where = root / _POD_CGROUP / f"pod{uid}"
    try:
        where.mkdir(parents=True)
        (where / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        pytest.skip(f"cannot make a pod's cgroup under {root}: {exc}")
    try:
        yield where
    finally:
        with contextlib.suppress(OSError):  # it may have exited
            (root / "cgroup.procs").write_text(f"{pid}\n")
        for folder in (where, where.parent, where.parent.parent):
            with contextlib.suppress(OSError):  # another test's pod may still be there
                folder.rmdir()


def connect(host: str, port: int, count: int, *, netns: str | None) -> list[socket.socket]:
    """``count`` connections opened from namespace ``netns`` (they stay there)."""

    def make() -> list[socket.socket]:
        return [socket.create_connection((host, port), timeout=5) for _ in range(count)]

    return inside(netns, make) if netns is not None else make()


def echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except OSError:
        return False


def accepted(host: str, port: int, *, netns: str | None) -> bool:
    """Whether a new connection is taken (False: refused, the SYN answered with a reset)."""
    try:
        (sock,) = connect(host, port, 1, netns=netns)
    except ConnectionRefusedError:
        return False
    sock.close()
    return True


def refusals(address: str, *, netns: str | None) -> list[Any]:
    """The refusal elements for ``address`` in the namespace's ``inet connbalance`` table."""

    def listing() -> list[Any]:
        done = subprocess.run(
            ["nft", "-j", "list", "set", "inet", "connbalance", "refuse4"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return []  # no table: nothing refuses
        sets = [item["set"] for item in json.loads(done.stdout)["nftables"] if "set" in item]
        return [
            e for e in sets[0].get("elem", []) if e["elem"]["val"]["concat"][0] == address
        ]

    return inside(netns, listing) if netns is not None else listing()
