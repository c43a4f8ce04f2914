"""Network namespaces of the tests' own (``ip netns add``), and running code inside one.

A namespace is a private network stack: its loopback, sockets, inet_diag view and nftables
ruleset are its own, so a test can set firewall rules and destroy sockets without touching the
machine's or another test's. ``inside`` runs a function on a thread that has entered the
namespace (setns applies to one thread); the sockets it opens, and the processes it starts,
live there.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_names = itertools.count(1)


def require_tools() -> None:
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make system-deps installs iproute2 and nftables)")


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh namespace with its loopback up (all of 127.0.0.0/8 is local on it)."""
    name = f"cbtest-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def inside(name: str, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread in namespace ``name``; its result, or its exception."""
    outcome: dict[str, Any] = {}

    def enter_and_run() -> None:
        try:
            _enter(name)
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_run, name=f"in {name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


def nft(script: str) -> str:
    """Run an nft script in the calling thread's namespace; its output."""
    done = subprocess.run(
        ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def nft_json(*command: str) -> dict[str, Any]:
    """``nft -j COMMAND...`` in the calling thread's namespace, decoded."""
    done = subprocess.run(["nft", "-j", *command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))
