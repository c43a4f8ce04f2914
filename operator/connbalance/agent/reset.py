"""Reset mode: out of the data path, cycle connections by destroying the server's own sockets.

Lists the established sockets on the served port through inet_diag, ranks them by tcp_info
idleness, and destroys the chosen ones with SOCK_DESTROY (as ``ss -K`` does): the client sees a
reset and reconnects. Needs CAP_NET_ADMIN in the pod's network namespace; checked at start-up by
destroying a socket pair of its own on 127.0.0.1, so a missing capability or kernel option shows
at the start, never at the first request. It fails the start (the node agent then refuses that
pod's requests), or, with ``stay_up_if_unable`` (the sidecar's way: an exited container would
make its pod unready), leaves the agent up but degraded: it still counts the connections, and
rejects every request saying why (``DrainEngine.cannot_cycle``).

With the pod's own ``address`` (``--pod-ip`` or ``POD_IP``) the agent sees, cycles and refuses
only connections to that address, so agents whose pods share a network namespace leave each
other's alone, and it steers in the kernel (``steering.py``). Without one it takes every
connection on the port and cannot steer. Steering that cannot be set up (no ``nft``) is logged
and left off: the agent cycles all the same, and the pod never depends on it.

Given a ``NetworkNamespace`` (the node agent's, ``node.py``), it opens its netlink socket and
runs ``nft`` in that namespace, and works in it as a sidecar works in its own.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import random
import socket
from collections.abc import Iterator, Set
from pathlib import Path

from prometheus_client import CollectorRegistry

from connbalance.agent.diagscan import Scan
from connbalance.agent.engine import DrainEngine
from connbalance.agent.netlink import (
    ROW_BYTES_RECEIVED,
    ROW_BYTES_SENT,
    ROW_INODE,
    ROW_LAST_RECEIVED_MS,
    ROW_LAST_SENT_MS,
    ROW_RECV_QUEUE,
    ROW_SEND_QUEUE,
    NetlinkError,
    SockDiag,
    SocketRow,
    TcpSocket,
)
from connbalance.agent.netns import NetworkNamespace
from connbalance.agent.selection import CloseRank, ConnectionInfo, close_rank
from connbalance.agent.steering import KernelSteering, SteeringUnavailable
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# Scans are shared by every slot waiting for quiet: one dump per this many seconds at most, or
# per four times what the last one took, so that with tens of thousands of sockets scanning
# never takes more than a fifth of the loop.
_SCAN_REUSE_SECONDS = 0.02
_SCAN_DUTY = 4.0
_POLL_FLOOR_SECONDS = 0.01


class ResetUnavailable(RuntimeError):
    """SOCK_DESTROY cannot be used here; the message says why and what to change."""


def check_sock_destroy() -> None:
    """Destroy a socket pair of our own on 127.0.0.1, or raise ResetUnavailable saying why."""
    listener = socket.socket()
    client = accepted = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = listener.accept()
        with SockDiag() as diag:
            mine = diag.established(port=port)
            if not mine:
                raise ResetUnavailable("reset mode: inet_diag does not list this agent's sockets")
            diag.destroy(mine[0])
    except NetlinkError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise ResetUnavailable(
                "reset mode needs CAP_NET_ADMIN to destroy sockets (SOCK_DESTROY was refused: "
                f"{os.strerror(exc.errno)}); add NET_ADMIN to the container's capabilities, or "
                "use --mode proxy"
            ) from None
        if exc.errno == errno.EOPNOTSUPP:
            raise ResetUnavailable(
                "reset mode needs a kernel with CONFIG_INET_DIAG_DESTROY (SOCK_DESTROY is not "
                "supported here); use --mode proxy"
            ) from None
        raise ResetUnavailable(f"reset mode: SOCK_DESTROY failed: {exc.strerror}") from None
    except OSError as exc:
        raise ResetUnavailable(
            f"reset mode: cannot probe SOCK_DESTROY on 127.0.0.1 ({exc})"
        ) from None
    finally:
        for sock in (accepted, client, listener):
            if sock is not None:
                sock.close()


class ResetAgent(DrainEngine):
    """The reset-mode agent for the server listening on ``port`` (at ``address``, if given) in
    this network namespace."""

    mode = "reset"

    def __init__(
        self,
        *,
        port: int,
        max_fraction: float,
        address: str | None = None,
        state_file: Path | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        namespace: NetworkNamespace | None = None,
        stay_up_if_unable: bool = False,
    ) -> None:
        super().__init__(
            max_fraction=max_fraction,
            state_file=state_file,
            rng=rng,
            registry=registry,
            clock=clock,
        )
        self.port = port
        self.address = address
        # Given (the node agent), the sockets are opened and nft is run in that namespace.
        self.namespace = namespace if namespace is not None else NetworkNamespace.own()
        self._stay_up_if_unable = stay_up_if_unable
        self._steering: KernelSteering | None = None
        self._diag: SockDiag | None = None
        self._scan_at = -1.0
        self._scan_cost = 0.0
        self._scan = Scan.empty()
        self._first_seen: dict[str, float] = {}

    async def start(self) -> None:
        """Raises ResetUnavailable when SOCK_DESTROY cannot be used, unless the agent was told
        to stay up unable; then it only counts, and rejects every request saying why."""
        try:
            self.namespace.call(check_sock_destroy)
        except ResetUnavailable as exc:
            if not self._stay_up_if_unable:
                raise
            self.cannot_cycle(str(exc))
        try:
            # Listing needs no capability, so a degraded agent still reports its connections.
            self._diag = self.namespace.call(SockDiag)
        except OSError as exc:
            if not self._stay_up_if_unable:
                raise
            self.cannot_cycle(self.degraded or f"reset mode: cannot open sock_diag ({exc})")
        if self.degraded:
            return
        if self.address is None:
            log.warning(
                "reset mode without the pod's address (--pod-ip or POD_IP): cycling every "
                "connection on port %d in this network namespace, and not steering",
                self.port,
            )
            return
        steering = KernelSteering(
            address=self.address, port=self.port, clock=self.clock, namespace=self.namespace
        )
        try:
            steering.prepare()
        except SteeringUnavailable as exc:
            log.warning("%s; cycling without steering", exc)
            return
        self._steering = steering

    async def stop(self) -> None:
        await self._cancel_requests()
        if self._steering is not None:
            try:
                self._steering.clear()
            except SteeringUnavailable as exc:
                log.warning("%s (the refusal expires by itself)", exc)
            self._steering = None
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def steer(self, seconds: float) -> None:
        if self._steering is None:
            super().steer(seconds)
            return
        try:
            self._steering.refuse(seconds)
        except SteeringUnavailable as exc:
            log.warning("%s; this request cycles without steering", exc)

    def _sockets(self, *, fresh: bool = False) -> Scan:
        if self._diag is None:
            if self.degraded:
                return Scan.empty()
            raise RuntimeError("the reset agent has not started")
        now = self.clock.monotonic()
        if fresh or now - self._scan_at > max(_SCAN_REUSE_SECONDS, _SCAN_DUTY * self._scan_cost):
            with _collector_paused():
                parts = self._diag.established_parts(port=self.port, address=self.address)
                self._scan = Scan(parts)
            self._scan_at = now
            self._scan_cost = self.clock.monotonic() - now
        return self._scan

    def active_count(self) -> int:
        if self._diag is None:
            return 0
        return self._diag.count_established(port=self.port, address=self.address)

    def connection_ids(self) -> Set[str]:
        return self._sockets(fresh=True).key_set()

    def connections(self) -> list[ConnectionInfo]:
        sockets = self._sockets()
        now = self._scan_at
        # First seen by this agent (the kernel does not say when a socket was opened); kept for
        # what asks for the list, not updated by the scans a request makes.
        rows = dict(sockets.items())
        self._first_seen = {k: self._first_seen.get(k, now) for k in rows}
        return [
            ConnectionInfo(
                id=key,
                peer=TcpSocket.from_row(row).remote,
                opened_at=self._first_seen[key],
                last_activity=now - _idle_ms(row) / 1000.0,
                idle_seconds=_idle_ms(row) / 1000.0,
                bytes_in=row[ROW_BYTES_RECEIVED],
                bytes_out=row[ROW_BYTES_SENT],
                queued=row[ROW_RECV_QUEUE] + row[ROW_SEND_QUEUE],
                client_spoke_last=_client_spoke_last(row),
            )
            for key, row in rows.items()
        ]

    def _choose(
        self, eligible: Set[str], claimed: set[str], *, quiet_seconds: float
    ) -> str | None:
        return first_to_close(
            self._sockets(), eligible=eligible, claimed=claimed, quiet_seconds=quiet_seconds
        )

    def _quiet_wait(self, conn_id: str, *, quiet_seconds: float) -> float | None:
        target = self._sockets().row(conn_id)
        if target is None:
            return None
        # Idle as of the scan, plus the time since: a scan may be reused for a few milliseconds.
        idle = _idle_ms(target) / 1000.0 + (self.clock.monotonic() - self._scan_at)
        queued = target[ROW_RECV_QUEUE] or target[ROW_SEND_QUEUE]
        if idle >= quiet_seconds and not _client_spoke_last(target) and not queued:
            return 0.0
        return max(quiet_seconds - idle, _POLL_FLOOR_SECONDS)

    def _shut(self, conn_id: str, *, graceful: bool) -> bool:
        # Graceful or not, a reset is all this mode has: the difference is only when it comes.
        target = self._sockets().row(conn_id)
        if target is None or self._diag is None:
            return False
        if not self._diag.destroy(TcpSocket.from_row(target)):
            return False
        self._scan.discard(conn_id)
        return True


def first_to_close(
    scan: Scan,
    *,
    eligible: Set[str],
    claimed: set[str],
    quiet_seconds: float,
) -> str | None:
    """``selection.pick``'s choice over a scan's columns, without a ConnectionInfo each: the
    same order (``close_rank``), with the socket's inode for its age (the kernel numbers sockets
    as it makes them, so the lower inode is the older connection). The scan remembers where the
    chosen socket is, so its quiet wait and its destruction find it without an index."""
    index = scan.quiet_head(eligible=eligible, claimed=claimed, quiet_ms=quiet_seconds * 1000.0)
    if index is None:
        free = scan.free(eligible=eligible, claimed=claimed)
        if not free:
            return None
        index = min(free, key=lambda i: _rank(scan.key_at(i), scan.row_at(i), quiet_seconds))
    scan.remember(index)
    return scan.key_at(index)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a scan allocates. A scan makes a tuple of numbers and
    bytes per socket, none of which can be part of a cycle, and the collections their allocation
    would set off walk the growing list of them again and again: about 45 ms of a 100,000-socket
    scan here. The first collection after it looks at each tuple once and stops tracking it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _idle_ms(row: SocketRow) -> int:
    return int(min(row[ROW_LAST_SENT_MS], row[ROW_LAST_RECEIVED_MS]))


def _client_spoke_last(row: SocketRow) -> bool:
    """The last data came from the client: a request not answered yet."""
    return bool(row[ROW_LAST_RECEIVED_MS] < row[ROW_LAST_SENT_MS])


def _rank(key: str, row: SocketRow, quiet_seconds: float) -> CloseRank:
    return close_rank(
        idle_seconds=_idle_ms(row) / 1000.0,
        busy=bool(row[ROW_RECV_QUEUE] or row[ROW_SEND_QUEUE]) or _client_spoke_last(row),
        opened=row[ROW_INODE],
        conn_id=key,
        quiet_seconds=quiet_seconds,
    )


__all__ = ["ResetAgent", "ResetUnavailable", "check_sock_destroy", "first_to_close"]
