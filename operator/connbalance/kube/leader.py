"""One leader among the operator's replicas, elected through a ``coordination.k8s.io`` Lease.

The rules are client-go's leader election: a candidate takes the Lease when nobody holds it, or
when the holder has not renewed it for ``lease_duration`` seconds *as observed here* (the time
the record was last seen to change, on this process's monotonic clock, so clocks that disagree
between nodes cannot hand the Lease to two holders). The holder renews every ``retry_period``;
when it cannot renew within ``renew_deadline`` it stops leading at once, before any other
candidate may take over, and says so through ``on_stopped``. Writes carry the resourceVersion
read, so of two candidates racing for an expired Lease the API server lets exactly one win.

``decide`` is the pure part, tested with a fake clock; ``LeaseElector`` does the I/O.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the Lease says: who holds it, for how long, and its version for the next write."""

    holder: str | None
    duration_seconds: int
    transitions: int
    resource_version: str | None
    acquired_at: datetime | None = None


class Move(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # nobody holds it, or the holder let it expire
    RENEW = "renew"  # it is ours
    WAIT = "wait"  # someone else holds it, still fresh


def decide(
    *, record: LeaseRecord | None, identity: str, seen_changing_at: float, now: float
) -> Move:
    """What a candidate does with the Lease it just read. ``seen_changing_at`` is when (on the
    monotonic clock) this candidate last saw the record change; ``now`` is that clock now."""
    if record is None:
        return Move.CREATE
    if record.holder == identity:
        return Move.RENEW
    if not record.holder or now >= seen_changing_at + record.duration_seconds:
        return Move.TAKE
    return Move.WAIT


@dataclass(frozen=True, slots=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease_duration > renew_deadline > retry_period > 0"
            )


class LeaseElector:
    """Campaigns for one Lease until cancelled. ``leading`` is set while this process leads."""

    def __init__(
        self,
        *,
        coordination: Any,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = coordination
        self._namespace, self._name, self.identity = namespace, name, identity
        self._timing = timing or Timing()
        self._clock = clock
        self._on_started, self._on_stopped = on_started, on_stopped
        self.leading = asyncio.Event()
        self.settled = asyncio.Event()  # the first attempt has an answer: leader or standby
        self._last_record: LeaseRecord | None = None
        self._seen_changing_at = clock.monotonic()
        self._renewed_at = clock.monotonic()
        self._last_error: str | None = None

    async def run(self) -> None:
        try:
            while True:
                await self._attempt()
                await self._clock.sleep(self._timing.retry_period)
        finally:
            if self.leading.is_set():
                self._stop_leading("shutting down")
                await self._release()

    async def _attempt(self) -> None:
        try:
            record = await asyncio.to_thread(self._read)
            self._observe(record)
            move = decide(
                record=record,
                identity=self.identity,
                seen_changing_at=self._seen_changing_at,
                now=self._clock.monotonic(),
            )
            if move is not Move.WAIT:
                await asyncio.to_thread(self._write, move, record)
                self._renewed_at = self._clock.monotonic()
                if not self.leading.is_set():
                    self._start_leading(move, record)
            elif self.leading.is_set():
                self._stop_leading(f"the Lease is held by {record.holder if record else None}")
        except Exception as exc:  # any failure to read or write is a missed renewal
            self._report(exc)
            self._missed_renewal(exc)
        else:
            self._last_error = None
        self.settled.set()

    def _report(self, exc: Exception) -> None:
        """A failure is logged when it first happens or changes, not at every retry."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if message != self._last_error:
            log.warning("lease %s/%s: %s", self._namespace, self._name, message)
            self._last_error = message

    def _observe(self, record: LeaseRecord | None) -> None:
        if record != self._last_record:
            self._last_record = record
            self._seen_changing_at = self._clock.monotonic()

    def _missed_renewal(self, exc: Exception) -> None:
        late = self._clock.monotonic() - self._renewed_at
        if self.leading.is_set() and late >= self._timing.renew_deadline:
            self._stop_leading(f"could not renew for {late:.0f} s ({exc})")

    def _start_leading(self, move: Move, record: LeaseRecord | None) -> None:
        previous = record.holder if record else None
        log.info("lease %s/%s: now leading (%s, previous holder %s)", self._namespace,
                 self._name, move.value, previous or "none")
        self.leading.set()
        self._on_started()

    def _stop_leading(self, why: str) -> None:
        log.warning("lease %s/%s: stopped leading: %s", self._namespace, self._name, why)
        self.leading.clear()
        self._on_stopped()

    def _read(self) -> LeaseRecord | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._api.read_namespaced_lease(self._name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = lease.spec
        return LeaseRecord(
            holder=spec.holder_identity,
            duration_seconds=int(spec.lease_duration_seconds or self._timing.lease_duration),
            transitions=int(spec.lease_transitions or 0),
            resource_version=lease.metadata.resource_version,
            acquired_at=spec.acquire_time,
        )

    def _write(self, move: Move, record: LeaseRecord | None) -> None:
        from kubernetes import client

        now = self._clock.now()
        transitions = record.transitions if record else 0
        ours = move is Move.RENEW and record is not None
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self._timing.lease_duration),
            acquire_time=record.acquired_at if ours and record else now,
            renew_time=now,
            lease_transitions=transitions if ours or move is Move.CREATE else transitions + 1,
        )
        meta = client.V1ObjectMeta(
            name=self._name, resource_version=record.resource_version if record else None
        )
        body = client.V1Lease(metadata=meta, spec=spec)
        if move is Move.CREATE:
            self._api.create_namespaced_lease(self._namespace, body)
        else:
            self._api.replace_namespaced_lease(self._name, self._namespace, body)

    async def _release(self) -> None:
        """Hand the Lease back on a clean stop, so a standby need not wait for it to expire."""
        from kubernetes import client

        try:
            record = await asyncio.to_thread(self._read)
            if record is None or record.holder != self.identity:
                return
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(
                    name=self._name, resource_version=record.resource_version
                ),
                spec=client.V1LeaseSpec(
                    holder_identity=None,
                    lease_duration_seconds=1,
                    lease_transitions=record.transitions,
                    renew_time=self._clock.now(),
                ),
            )
            await asyncio.to_thread(
                self._api.replace_namespaced_lease, self._name, self._namespace, body
            )
        except Exception as exc:  # the Lease expires on its own anyway
            log.info("lease %s/%s: not released: %s", self._namespace, self._name, exc)
