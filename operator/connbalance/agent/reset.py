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

import errno
import logging
import os
import random
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry

from connbalance.agent.engine import DrainEngine
from connbalance.agent.netlink import NetlinkError, SockDiag, TcpSocket
from connbalance.agent.netns import NetworkNamespace
from connbalance.agent.selection import ConnectionInfo
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
        self._scan: dict[str, TcpSocket] = {}
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

    def _sockets(self, *, fresh: bool = False) -> dict[str, TcpSocket]:
        if self._diag is None:
            if self.degraded:
                return {}
            raise RuntimeError("the reset agent has not started")
        now = self.clock.monotonic()
        if fresh or now - self._scan_at > max(_SCAN_REUSE_SECONDS, _SCAN_DUTY * self._scan_cost):
            found = self._diag.established(port=self.port, address=self.address)
            self._scan = {s.key: s for s in found}
            self._scan_at = now
            self._scan_cost = self.clock.monotonic() - now
            self._first_seen = {k: self._first_seen.get(k, now) for k in self._scan}
        return self._scan

    def connections(self) -> list[ConnectionInfo]:
        sockets = self._sockets()
        now = self._scan_at
        return [
            ConnectionInfo(
                id=key,
                peer=s.remote,
                # First seen by this agent: the kernel does not say when a socket was opened.
                opened_at=self._first_seen.get(key),
                last_activity=now - s.idle_ms / 1000.0,
                idle_seconds=s.idle_ms / 1000.0,
                bytes_in=s.bytes_received,
                bytes_out=s.bytes_sent,
                queued=s.recv_queue + s.send_queue,
                client_spoke_last=s.peer_spoke_last,
            )
            for key, s in sockets.items()
        ]

    def _quiet_wait(self, conn_id: str, *, quiet_seconds: float) -> float | None:
        target = self._sockets().get(conn_id)
        if target is None:
            return None
        # Idle as of the scan, plus the time since: a scan may be reused for a few milliseconds.
        idle = target.idle_ms / 1000.0 + (self.clock.monotonic() - self._scan_at)
        if (
            idle >= quiet_seconds
            and not target.peer_spoke_last
            and target.recv_queue == 0
            and target.send_queue == 0
        ):
            return 0.0
        return max(quiet_seconds - idle, _POLL_FLOOR_SECONDS)

    def _shut(self, conn_id: str, *, graceful: bool) -> bool:
        # Graceful or not, a reset is all this mode has: the difference is only when it comes.
        target = self._sockets().get(conn_id)
        if target is None or self._diag is None or not self._diag.destroy(target):
            return False
        self._scan.pop(conn_id, None)
        return True


__all__ = ["ResetAgent", "ResetUnavailable", "check_sock_destroy"]
