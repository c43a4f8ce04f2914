"""The one place drain requests are made: ids, caps, cooldowns, delivery and Events.

Strategies and the state machine only propose; the issuer refuses with a typed error when a cap or
a cooldown would be broken, and does nothing twice: a request whose id is already on the pod is
not delivered again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connbalance.controller.state import request_id
from connbalance.model import (
    DrainRequest,
    Plan,
    PodName,
    PodState,
    Policy,
    PolicyName,
    RequestId,
)
from connbalance.ports import Actuator, EventSink


class IssueRefused(Exception):
    """A drain the issuer will not make. Nothing was delivered for the pod named."""

    def __init__(self, pod: PodName, message: str) -> None:
        super().__init__(f"{pod}: {message}")
        self.pod = pod


class CapExceeded(IssueRefused):
    pass


class CooldownActive(IssueRefused):
    pass


@dataclass(slots=True)
class RecordingActuator:
    """Dry run: the same path, but requests are only recorded."""

    delivered: list[tuple[PodName, DrainRequest]] = field(default_factory=list)

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        self.delivered.append((pod.name, request))


@dataclass(slots=True)
class DrainIssuer:
    name: PolicyName
    policy: Policy
    actuator: Actuator
    events: EventSink

    @property
    def cooldown(self) -> float:
        """From a step to the next, on the pool and on each pod: the drain window, then a step
        interval to measure what it did."""
        return self.policy.actuation.window_seconds + self.policy.balance.step_interval_seconds

    def check(self, *, pod: PodState, count: int, load: float, now: float) -> None:
        """Raise if cycling ``count`` of ``pod`` (at ``load``) breaks a cap or a cooldown."""
        balance = self.policy.balance
        if count > balance.max_connections_per_step:
            raise CapExceeded(
                pod.name, f"{count} over maxConnectionsPerStep {balance.max_connections_per_step}"
            )
        if count > math.floor(balance.max_fraction_per_step * load):
            raise CapExceeded(
                pod.name,
                f"{count} over maxFractionPerStep {balance.max_fraction_per_step:g} of {load:g}",
            )
        drain = pod.drain
        if drain is not None and drain.policy == self.name and drain.issued_at is not None:
            ready_at = drain.issued_at.timestamp() + self.cooldown
            if now < ready_at:
                raise CooldownActive(
                    pod.name, f"last drain {drain.id} cools down for {ready_at - now:.0f}s more"
                )

    async def issue(
        self,
        *,
        plan: Plan,
        pods: Mapping[PodName, PodState],
        loads: Mapping[PodName, float],
        episode: str,
        step: int,
        now: float,
    ) -> tuple[DrainRequest, ...]:
        """Deliver the plan's drains as step ``step`` of ``episode``. Returns what was delivered
        now (not what was already on the pods)."""
        budget = math.floor(self.policy.balance.max_pool_fraction_per_step * sum(loads.values()))
        if plan.total > budget:
            raise CapExceeded(
                plan.drains[0].pod, f"step of {plan.total} over maxPoolFractionPerStep ({budget})"
            )
        # Check every drain before delivering any, so a refusal leaves the pool untouched.
        pending: list[tuple[PodState, DrainRequest]] = []
        for drain in plan.drains:
            pod = pods[drain.pod]
            rid = request_id(episode=episode, step=step, pod=drain.pod)
            if pod.drain is not None and pod.drain.id == rid:
                continue  # delivered before a restart: never twice
            self.check(pod=pod, count=drain.count, load=loads[drain.pod], now=now)
            pending.append((pod, self._request(rid, count=drain.count, now=now)))
        delivered: list[DrainRequest] = []
        for pod, request in pending:
            await self.actuator.deliver(pod=pod, request=request)
            delivered.append(request)
            self.events.emit(
                kind="Normal",
                reason="DrainRequested",
                message=_requested(pod.name, request, dry_run=self.policy.dry_run),
            )
        return tuple(delivered)

    def _request(self, rid: RequestId, *, count: int, now: float) -> DrainRequest:
        actuation = self.policy.actuation
        issued_at = datetime.fromtimestamp(now, UTC)
        return DrainRequest(
            id=rid,
            count=count,
            window_seconds=actuation.window_seconds,
            quiet_millis=actuation.quiet_millis,
            deadline=issued_at + timedelta(seconds=actuation.deadline_seconds),
            policy=self.name,
            issued_at=issued_at,
            # With readinessGate the pod leaves the endpoints instead: its agent must not refuse.
            steer=actuation.agent_steers,
        )


def _requested(pod: PodName, request: DrainRequest, *, dry_run: bool) -> str:
    asked = f"dry run: would ask {pod}" if dry_run else f"asked {pod}"
    if request.count:
        return f"{asked} to cycle {request.count} connections ({request.id})"
    return (
        f"{asked} to refuse new connections for the window, cycling none, so reconnects "
        f"land on emptier pods ({request.id})"
    )
