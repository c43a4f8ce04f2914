"""Entering another network namespace, one thread at a time, to open handles that stay there.

The node agent serves pods whose network stacks are not its own. Three facts of Linux make it
cheap and safe: ``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread; a socket
belongs to the namespace it was created in for its whole life, whichever thread uses it later;
and a child process starts in the namespace of the thread that forked it. So each namespace
gets one worker thread that enters it once and never leaves; the netlink socket (inet_diag,
SOCK_DESTROY) is opened there and then used from the event loop, and ``nft`` is run from there.
The event loop's thread never changes namespace.

Python 3.11 has no ``os.setns`` (3.12 added it), so this calls libc's ``setns`` through
``ctypes``, the standard library's foreign-function interface, and uses ``os.setns`` where it
exists. Not pyroute2: its ``pyroute2.netns.setns`` wraps the same libc call, and would add a
package to the image for ten lines. Not ``nsenter``: it would enter again for every ``nft`` call
by a path such as ``/proc/<pid>/ns/net``, which after the pod's sandbox dies can name another
process's namespace; here the namespace is pinned by a file descriptor held open from the moment
it was found, so a reused pid can never redirect the agent.

Entering needs CAP_SYS_ADMIN; opening ``/proc/<pid>/ns/net`` of another user's process needs
CAP_SYS_PTRACE (and the node's pid namespace, ``hostPID``, to see the pod's processes at all).
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class NamespaceUnavailable(RuntimeError):
    """A network namespace could not be opened or entered; the message says why."""


def _setns(fd: int) -> None:
    native = getattr(os, "setns", None)
    if native is not None:  # Python 3.12 and later
        native(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


_Job = tuple[Callable[..., Any], tuple[Any, ...], "Future[Any]"]


class NetworkNamespace:
    """An open network namespace and the one thread that runs calls inside it.

    ``call(function, *args)`` runs on that thread and returns its result (or raises its
    exception); the calling thread waits. ``own()`` is the agent's own namespace: calls run in
    the caller's thread, and nothing is entered. ``close()`` ends the thread and lets the
    namespace go (the kernel frees it once no process, socket or descriptor holds it).
    """

    def __init__(self, *, fd: int | None, name: str) -> None:
        self.name = name
        self._fd = fd
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if fd is not None:
            entered: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._serve, args=(fd, entered), name=f"netns {name}", daemon=True
            )
            self._thread.start()
            try:
                entered.result()
            except OSError as exc:
                self.close()
                raise NamespaceUnavailable(
                    f"cannot enter network namespace {name}: {exc.strerror} (setns needs "
                    "CAP_SYS_ADMIN)"
                ) from None

    @classmethod
    def own(cls) -> NetworkNamespace:
        return cls(fd=None, name="own")

    @classmethod
    def open(cls, path: Path, *, name: str) -> NetworkNamespace:
        """Pin the namespace at ``path`` (``/proc/<pid>/ns/net``, ``/run/netns/<name>``) and
        enter it on a thread of its own."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            hint = (
                " (another process's namespace needs CAP_SYS_PTRACE, and hostPID to see it)"
                if exc.errno in (errno.EACCES, errno.EPERM)
                else ""
            )
            raise NamespaceUnavailable(f"cannot open {path}: {exc.strerror}{hint}") from None
        return cls(fd=fd, name=name)

    @property
    def entered(self) -> bool:
        """Whether calls run in another namespace (False for ``own()``)."""
        return self._thread is not None

    def call(self, function: Callable[..., T], *args: Any) -> T:
        if self._fd is None:
            return function(*args)
        if self._thread is None:
            raise NamespaceUnavailable(f"network namespace {self.name} is closed")
        done: Future[T] = Future()
        self._jobs.put((function, args, done))
        return done.result()

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _serve(self, fd: int, entered: Future[None]) -> None:
        try:
            _setns(fd)
        except OSError as exc:
            entered.set_exception(exc)
            return
        entered.set_result(None)
        while (job := self._jobs.get()) is not None:
            function, args, done = job
            try:
                done.set_result(function(*args))
            except BaseException as exc:  # handed to the caller's thread
                done.set_exception(exc)


__all__ = ["NamespaceUnavailable", "NetworkNamespace"]
