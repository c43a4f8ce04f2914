"""Finding a pod's network namespace from its node, the way node-level tools do.

Strategies, tried in the order the node agent is given (``--netns-from``):

- ``cgroup``: every process of a pod sits in a cgroup whose path names the pod's uid, as the
  kubelet lays them out: ``/kubepods/burstable/pod<uid>/...`` (cgroupfs driver) or
  ``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/...``
  (systemd driver), in cgroup v1 and v2 alike. So ``/proc/*/cgroup`` names the pod's processes,
  and ``/proc/<pid>/ns/net`` is its namespace. Needs the node's pid namespace (``hostPID``).
- ``cri``: the container runtime knows each pod's sandbox: ``crictl pods`` by the pod's uid
  label, then ``crictl inspectp``; its answer gives the sandbox's pid and namespace path, or says
  the sandbox uses the node's network. Needs ``crictl`` and the runtime's socket.
- ``host``: the node's own namespace, for pods that share it without saying so (the test
  cluster's processes). ``hostNetwork`` pods are always served there, whatever the order.

In the node's own namespace the agent keeps to the pod's address and port, so it never touches
another pod's or the node's connections. The answers are read, never trusted for long: the
namespace is pinned by a descriptor as soon as it is found (``netns.py``), and a process found by
its cgroup is checked again after, so a pid reused in between is never entered.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PROC = Path("/proc")
UID_LABEL = "io.kubernetes.pod.uid"
_HEX = "[0-9a-f]"
# The kubelet writes the uid with dashes (cgroupfs) or underscores (systemd, which reserves "-").
_POD_IN_CGROUP = re.compile(
    rf"pod({_HEX}{{8}}[-_]{_HEX}{{4}}[-_]{_HEX}{{4}}[-_]{_HEX}{{4}}[-_]{_HEX}{{12}})"
)
_CRICTL_TIMEOUT_SECONDS = 10.0

Runner = Callable[[Sequence[str]], str]


class NamespaceNotFound(LookupError):
    """No strategy found the pod's namespace; the message says what each one saw."""


@dataclass(frozen=True, slots=True)
class PodRef:
    """What finding a namespace needs to know of a pod."""

    uid: str
    namespace: str
    name: str
    host_network: bool = False

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Found:
    """Where a pod's network lives: ``path`` to its namespace, or None for the node's own."""

    path: Path | None
    source: str
    detail: str
    pid: int | None = None


class Strategy(Protocol):
    name: str

    def find(self, pod: PodRef) -> Found | str:
        """Where the pod's network is, or why this strategy cannot say."""
        ...

    def still(self, pod: PodRef, found: Found) -> bool:
        """Whether ``found`` is still the pod's (asked after its namespace has been pinned)."""
        ...


def pod_uid_in(cgroup_text: str) -> str | None:
    """The pod uid a ``/proc/<pid>/cgroup`` names (dashed), or None for a process in no pod."""
    match = _POD_IN_CGROUP.search(cgroup_text)
    return match.group(1).replace("_", "-") if match else None


class CgroupStrategy:
    """Processes whose cgroup names the pod's uid; the lowest pid (the sandbox starts first)."""

    name = "cgroup"

    def __init__(self, *, proc: Path = PROC) -> None:
        self._proc = proc

    def pids(self, uid: str) -> list[int]:
        found = []
        for entry in self._proc.iterdir():
            if entry.name.isdigit() and self._uid_of(int(entry.name)) == uid:
                found.append(int(entry.name))
        return sorted(found)

    def find(self, pod: PodRef) -> Found | str:
        for pid in self.pids(pod.uid):
            path = self._proc / str(pid) / "ns" / "net"
            if path.exists():
                return Found(path=path, source=self.name, detail=f"pid {pid}", pid=pid)
        return f"no process under {self._proc} is in a cgroup of pod uid {pod.uid}"

    def still(self, pod: PodRef, found: Found) -> bool:
        return found.pid is not None and self._uid_of(found.pid) == pod.uid

    def _uid_of(self, pid: int) -> str | None:
        try:
            text = (self._proc / str(pid) / "cgroup").read_text(encoding="utf-8")
        except OSError:  # gone, or not ours to read
            return None
        return pod_uid_in(text)


def run_crictl(argv: Sequence[str]) -> str:
    """Run crictl, its standard output; raises OSError with its message when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=_CRICTL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"{argv[0]} gave no answer within {_CRICTL_TIMEOUT_SECONDS:g}s") from None
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"{argv[0]} exited with {done.returncode}")
    return done.stdout


class CriStrategy:
    """The runtime's sandbox for the pod, through ``crictl`` (``run`` is the seam for tests)."""

    name = "cri"

    def __init__(
        self, *, crictl: Sequence[str] = ("crictl",), run: Runner = run_crictl, proc: Path = PROC
    ) -> None:
        self._crictl = list(crictl)
        self._run = run
        self._proc = proc

    def find(self, pod: PodRef) -> Found | str:
        try:
            listed = self._json("pods", "--label", f"{UID_LABEL}={pod.uid}", "--state", "ready")
            sandboxes = [s for s in listed.get("items") or [] if _uid(s) in ("", pod.uid)]
            if not sandboxes:
                return f"the runtime has no ready sandbox for pod uid {pod.uid}"
            sandbox_id = str(sandboxes[0]["id"])
            return self._found(sandbox_id, self._json("inspectp", sandbox_id))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"crictl: {exc}"

    def still(self, pod: PodRef, found: Found) -> bool:
        # A sandbox's namespace lives as long as the sandbox: nothing to reuse in between.
        return True

    def _found(self, sandbox_id: str, answer: dict[str, Any]) -> Found | str:
        status, info = answer.get("status") or {}, answer.get("info") or {}
        options = ((status.get("linux") or {}).get("namespaces") or {}).get("options") or {}
        short = sandbox_id[:13]
        if options.get("network") == "NODE":
            return Found(path=None, source=self.name, detail=f"sandbox {short} uses the node's")
        pid = info.get("pid")
        if isinstance(pid, int) and pid > 0:
            path = self._proc / str(pid) / "ns" / "net"
            return Found(path=path, source=self.name, detail=f"sandbox {short}, pid {pid}")
        spec = (info.get("runtimeSpec") or {}).get("linux") or {}
        for namespace in spec.get("namespaces") or []:
            if namespace.get("type") == "network" and namespace.get("path"):
                path = Path(namespace["path"])
                return Found(path=path, source=self.name, detail=f"sandbox {short}, {path}")
        return f"crictl inspectp {short} names neither a pid nor a network namespace"

    def _json(self, *args: str) -> dict[str, Any]:
        # Flags before the arguments: crictl stops reading flags at the first argument.
        command, *rest = args
        text = self._run([*self._crictl, command, "-o", "json", *rest])
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{command}: the answer is not a JSON object")
        return data


def _uid(sandbox: dict[str, Any]) -> str:
    return str((sandbox.get("metadata") or {}).get("uid") or "")


class HostStrategy:
    """The node's own namespace, filtered by the pod's address and port."""

    name = "host"

    def find(self, pod: PodRef) -> Found | str:
        return Found(path=None, source=self.name, detail="the node's namespace")

    def still(self, pod: PodRef, found: Found) -> bool:
        return True


def find_namespace(pod: PodRef, strategies: Sequence[Strategy]) -> tuple[Found, Strategy | None]:
    """Where the pod's network is, by the first strategy that knows, and that strategy (None
    for a ``hostNetwork`` pod). Raises NamespaceNotFound saying what each strategy saw."""
    if pod.host_network:
        return Found(path=None, source="hostNetwork", detail="the node's namespace"), None
    reasons = []
    for strategy in strategies:
        answer = strategy.find(pod)
        if isinstance(answer, Found):
            return answer, strategy
        reasons.append(f"{strategy.name}: {answer}")
    raise NamespaceNotFound(f"pod {pod}: no network namespace found ({'; '.join(reasons)})")


STRATEGIES = ("cgroup", "cri", "host")


def make_strategies(
    names: Sequence[str], *, proc: Path = PROC, crictl: Sequence[str] = ("crictl",)
) -> list[Strategy]:
    made: dict[str, Callable[[], Strategy]] = {
        "cgroup": lambda: CgroupStrategy(proc=proc),
        "cri": lambda: CriStrategy(crictl=crictl, proc=proc),
        "host": HostStrategy,
    }
    return [made[name]() for name in names]


__all__ = [
    "STRATEGIES",
    "CgroupStrategy",
    "CriStrategy",
    "Found",
    "HostStrategy",
    "NamespaceNotFound",
    "PodRef",
    "Strategy",
    "find_namespace",
    "make_strategies",
    "pod_uid_in",
    "run_crictl",
]
