"""What both modes share: deduplicated intake, the ceiling, the spread schedule, progress, metrics.

A mode (proxy or reset) subclasses ``DrainEngine`` and supplies the connections it can see
(``connections``), how long one has still to wait before it counts as quiet (``_quiet_wait``),
and a way to close one (``_shut``). Every timing decision (when each close is due, how long to
wait for quiet, when the deadline forces a close) is made here, on the injected clock.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable, Set
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from connbalance.agent.lastrequest import LastRequestCollector
from connbalance.agent.metrics import AgentMetrics
from connbalance.agent.selection import ConnectionInfo, ceiling, pick, spread
from connbalance.agent.state import SeenRequests
from connbalance.agent.status import AgentStatus, CloseOutcome, RequestState, RequestStatus
from connbalance.model import DrainRequest
from connbalance.model.drain import DEFAULT_QUIET_MILLIS
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# How long a slot whose chosen connection vanished on its own may keep looking for another one.
_REPICK_LIMIT = 64
# Direct closes (outside any request) are asked for by strategies that sit in no policy.
DEFAULT_DIRECT_DEADLINE_SECONDS = 30.0


class DrainEngine(abc.ABC):
    """One mode's agent. ``clock`` times everything it does; the default, the system clock, is
    for the command line and the in-process users that run in real time."""

    mode: str = ""

    def __init__(
        self,
        *,
        max_fraction: float,
        state_file: Path | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be between 0 and 1, not {max_fraction!r}")
        self.max_fraction = max_fraction
        self.clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._seen = SeenRequests(path=state_file)
        self._statuses: dict[str, RequestStatus] = {}
        for entry in self._seen.entries():
            status = RequestStatus.from_wire(entry)
            if status.state in (RequestState.PENDING, RequestState.RUNNING):
                # Interrupted by a restart: it may have cycled some, so it is over, never resumed.
                status = replace(status, state=RequestState.DONE, reason="interrupted by restart")
            self._statuses[status.id] = status
        self._claimed: set[str] = set()
        self._tasks: dict[str, asyncio.Task[RequestStatus]] = {}
        self.cycled_total = 0
        self.degraded = ""
        self._warned_no_steer = False
        self.metrics = AgentMetrics(mode=self.mode, active=self.active_count, registry=registry)
        self.metrics.registry.register(
            LastRequestCollector(lambda: next(reversed(self._statuses.values()), None))
        )

    # --- what a mode supplies -------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin serving (proxy) or watching (reset); call inside the running loop."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Cancel running requests and release sockets."""

    @abc.abstractmethod
    def connections(self) -> list[ConnectionInfo]:
        """The client connections open now, with their idleness."""

    @abc.abstractmethod
    def _quiet_wait(self, conn_id: str, *, quiet_seconds: float) -> float | None:
        """Seconds to wait before looking again whether the connection is quiet: 0.0 when it is
        quiet now (and may be closed gracefully), None when it is gone."""

    @abc.abstractmethod
    def _shut(self, conn_id: str, *, graceful: bool) -> bool:
        """Close the connection now, gracefully or not; False when it was already gone."""

    def active_count(self) -> int:
        return len(self.connections())

    def connection_ids(self) -> Set[str]:
        """The ids of the connections open now: what a request arriving now may cycle."""
        return frozenset(c.id for c in self.connections())

    def _choose(
        self, eligible: Set[str], claimed: set[str], *, quiet_seconds: float
    ) -> str | None:
        """The connection to close next (``selection.pick``'s order); a mode with many
        connections may rank them faster, in the same order."""
        conn = pick(
            self.connections(), eligible=eligible, claimed=claimed, quiet_seconds=quiet_seconds
        )
        return None if conn is None else conn.id

    def cannot_cycle(self, reason: str) -> None:
        """From now on reject every request, saying ``reason`` in /status, the metrics and each
        rejection: an agent that stays up unable to act never takes its pod's readiness down."""
        self.degraded = reason
        self.metrics.can_cycle.set(0)
        log.error("%s; staying up, rejecting every drain request", reason)

    # --- intake -------------------------------------------------------------------------------

    async def submit(self, request: DrainRequest) -> RequestStatus:
        """Act on ``request`` once, ever: a repeated id returns its status and does nothing."""
        known = self._statuses.get(request.id)
        if known is not None:
            self.metrics.count_request("duplicate")
            return replace(known, duplicate=True)
        # Listed once: the ceiling counts them, and only they may be cycled.
        eligible = self.connection_ids() if self._may_start(request) == "" else frozenset()
        reason = self._refusal(request, active=len(eligible))
        state = RequestState.REJECTED if reason else RequestState.RUNNING
        status = RequestStatus(
            id=request.id, count=request.count, cycled=0, forced=0, state=state, reason=reason
        )
        # Written down before the first close, so a crash mid-request never repeats it.
        self._remember(status)
        if reason:
            self.metrics.count_request("rejected")
            return status
        self.metrics.count_request("accepted")
        self.metrics.last_request.set(self.clock.now().timestamp())
        task = asyncio.get_running_loop().create_task(
            self._run(request, eligible), name=f"drain {request.id}"
        )
        self._tasks[request.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(request.id, None))
        if request.steer:
            # A little past the window, so the last closes of the window also land elsewhere.
            self.steer(request.window_seconds + 1.0)
        return status

    def steer(self, seconds: float) -> None:
        """Keep new client connections off this pod for ``seconds``. A mode that cannot (reset
        mode without the pod's address or nftables) says so once; the planner's steered
        estimate then under-sheds, which costs steps but never overshoots."""
        if not self._warned_no_steer:
            self._warned_no_steer = True
            log.warning("%s mode cannot refuse new connections: steer is ignored", self.mode)

    def _may_start(self, request: DrainRequest) -> str:
        if self.degraded:
            return f"this agent cannot cycle connections: {self.degraded}"
        if request.deadline <= self.clock.now():
            return "deadline has passed"
        return ""

    def _refusal(self, request: DrainRequest, *, active: int) -> str:
        if reason := self._may_start(request):
            return reason
        most = ceiling(active=active, max_fraction=self.max_fraction)
        # Requests still running hold part of the ceiling until they finish.
        pending = sum(
            s.count - s.cycled for s in self._statuses.values() if s.state is RequestState.RUNNING
        )
        if request.count > most - pending:
            held = f", {pending} of them held by running requests" if pending else ""
            return (
                f"count {request.count} exceeds this agent's ceiling of {most} "
                f"(--max-fraction {self.max_fraction:g} of {active} active connections{held})"
            )
        return ""

    def _remember(self, status: RequestStatus) -> None:
        self._statuses[status.id] = status
        self._seen.record(status.to_wire())

    # --- progress -------------------------------------------------------------------------------

    def request_status(self, request_id: str) -> RequestStatus | None:
        return self._statuses.get(request_id)

    def status(self) -> AgentStatus:
        return AgentStatus(
            mode=self.mode,
            active=self.active_count(),
            cycled_total=self.cycled_total,
            requests=tuple(self._statuses.values()),
            degraded=self.degraded,
        )

    async def wait(self, request_id: str, *, timeout: float | None = None) -> RequestStatus:
        """The request's final status, once its last close has happened."""
        task = self._tasks.get(request_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        status = self._statuses.get(request_id)
        if status is None:
            raise KeyError(request_id)
        return status

    # --- cycling ----------------------------------------------------------------------------------

    async def _run(self, request: DrainRequest, eligible: Set[str]) -> RequestStatus:
        start = self.clock.monotonic()
        # The deadline is wall time on the wire; from here on it is read on the monotonic clock.
        deadline = start + (request.deadline - self.clock.now()).total_seconds()
        due = spread(
            count=request.count, window_seconds=request.window_seconds, rng=self._rng, start=start
        )
        loop = asyncio.get_running_loop()
        slots = [
            loop.create_task(self._slot(request, min(at, deadline), eligible, deadline))
            for at in due
        ]
        reason = "fewer connections left than requested"
        try:
            await asyncio.gather(*slots)
        except asyncio.CancelledError:
            reason = "interrupted by shutdown"
            raise
        finally:
            for task in slots:
                task.cancel()
            final = replace(self._statuses[request.id], state=RequestState.DONE)
            if final.cycled < request.count:
                final = replace(final, reason=reason)
            self._remember(final)
        return final

    async def _slot(
        self, request: DrainRequest, at: float, eligible: Set[str], deadline: float
    ) -> None:
        """One close of a request: at its time, the eligible connection nobody else is closing
        that went quiet most recently (``freshly_quiet_first``); another one if that one goes
        away by itself first."""
        await self.clock.sleep(at - self.clock.monotonic())
        quiet_seconds = request.quiet_millis / 1000.0
        for _ in range(_REPICK_LIMIT):
            conn_id = self._choose(eligible, self._claimed, quiet_seconds=quiet_seconds)
            if conn_id is None:
                return
            outcome = await self._claim_and_close(conn_id, quiet_seconds, deadline)
            if outcome is not None:
                status = self._statuses[request.id]
                self._statuses[request.id] = replace(
                    status,
                    cycled=status.cycled + 1,
                    forced=status.forced + (outcome is CloseOutcome.FORCED),
                )
                return

    async def _claim_and_close(
        self, conn_id: str, quiet_seconds: float, deadline: float
    ) -> CloseOutcome | None:
        self._claimed.add(conn_id)
        try:
            outcome = await self._close_when_quiet(
                conn_id, quiet_seconds=quiet_seconds, deadline=deadline
            )
        finally:
            self._claimed.discard(conn_id)
        if outcome is not None:
            self.cycled_total += 1
            self.metrics.count_cycled(forced=outcome is CloseOutcome.FORCED)
        return outcome

    async def _close_when_quiet(
        self, conn_id: str, *, quiet_seconds: float, deadline: float
    ) -> CloseOutcome | None:
        """Close once quiet for ``quiet_seconds``, or anyway at the monotonic ``deadline``.

        None when the connection went away by itself first.
        """
        while True:
            wait = self._quiet_wait(conn_id, quiet_seconds=quiet_seconds)
            if wait is None:
                return None
            now = self.clock.monotonic()
            graceful = wait <= 0.0
            if graceful or now >= deadline:
                if not self._shut(conn_id, graceful=graceful):
                    return None
                return CloseOutcome.GRACEFUL if graceful else CloseOutcome.FORCED
            await self.clock.sleep(min(wait, deadline - now))

    async def close(
        self,
        conn_ids: Iterable[str],
        *,
        graceful: bool = True,
        quiet_millis: int = DEFAULT_QUIET_MILLIS,
        deadline_seconds: float = DEFAULT_DIRECT_DEADLINE_SECONDS,
    ) -> list[CloseOutcome | None]:
        """Close these connections now, outside any request (for strategies such as max-age).

        Graceful waits for ``quiet_millis`` of quiet, up to ``deadline_seconds``; otherwise each
        closes at once and counts as forced. None for an id that is not (or no longer) open.
        """
        deadline = self.clock.monotonic() + (deadline_seconds if graceful else 0.0)

        async def one(conn_id: str) -> CloseOutcome | None:
            if conn_id in self._claimed:
                return None
            return await self._claim_and_close(conn_id, quiet_millis / 1000.0, deadline)

        return list(await asyncio.gather(*(one(c) for c in conn_ids)))

    async def _cancel_requests(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = [
    "AgentStatus",
    "CloseOutcome",
    "DrainEngine",
    "RequestState",
    "RequestStatus",
]
