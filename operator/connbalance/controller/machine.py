"""The state machine: one ``tick`` observes, decides, issues at most one step, and says when to
come back."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from connbalance.controller.issuer import (
    CooldownActive,
    DrainIssuer,
    IssueRefused,
    RecordingActuator,
)
from connbalance.controller.state import Condition, ControllerState, IssuedStep, newest_step
from connbalance.model import DrainRequest, Phase, Plan, PodName, PodState, Policy, PolicyName
from connbalance.planner import Verdict
from connbalance.planner.plan import decide
from connbalance.ports import (
    ActuationError,
    Actuator,
    EventSink,
    Fleet,
    FleetError,
    FleetView,
    LoadSource,
    MetricsError,
)

# A step counts as progress only if it lowered skew by at least this share.
_PROGRESS = 0.01
# A step found on the pods but missing from status is resumed only while this recent (in
# cooldowns); an older one belongs to an episode that has ended.
_RESUME_HORIZON = 3


@dataclass(frozen=True, slots=True)
class Seen:
    """What one tick observed, carried into its result for status and display."""

    pods: tuple[PodState, ...] = ()
    loads: Mapping[PodName, float] = field(default_factory=dict)
    plan: Plan | None = None


@dataclass(frozen=True, slots=True)
class TickResult:
    state: ControllerState
    conditions: tuple[Condition, ...]
    requeue_after: float
    seen: Seen = field(default_factory=Seen)
    issued: tuple[DrainRequest, ...] = ()

    @property
    def plan(self) -> Plan | None:
        return self.seen.plan


class Controller:
    def __init__(
        self,
        *,
        name: PolicyName,
        policy: Policy,
        loads: LoadSource,
        fleet: Fleet,
        actuator: Actuator,
        events: EventSink,
        clock: Callable[[], float],
    ) -> None:
        self._name = name
        self._policy = policy
        self._loads = loads
        self._fleet = fleet
        self._events = events
        self._clock = clock
        # Dry run swaps the actuator, never the logic.
        self._issuer = DrainIssuer(
            name=name,
            policy=policy,
            actuator=RecordingActuator() if policy.dry_run else actuator,
            events=events,
        )

    @property
    def cooldown(self) -> float:
        """From a step to the next: the drain window, then a step interval to measure it."""
        return self._policy.actuation.window_seconds + self._policy.balance.step_interval_seconds

    async def tick(self, state: ControllerState) -> TickResult:
        now = self._clock()
        policy, interval = self._policy, self._policy.balance.step_interval_seconds
        if policy.paused:
            return _result(state, Phase.PAUSED, "spec.paused is true", interval)
        try:
            view = await self._fleet.observe()
        except FleetError as exc:
            return _result(
                state,
                Phase.DEGRADED,
                f"cannot read the pool: {exc}",
                interval,
                ready=("False", exc.reason),
            )
        state = self._recover(state, newest_step(view.pods, policy=self._name), now)
        pods = {p.name: p for p in view.pods}
        if state.last_step_at is not None and now < state.last_step_at + self.cooldown:
            wait = state.last_step_at + self.cooldown - now
            return _result(
                state,
                Phase.COOLING_DOWN,
                f"step {state.step} in flight; next measurement in {wait:.0f}s",
                max(1.0, wait),
                seen=Seen(pods=view.pods),
            )
        if not view.rollout_complete:
            # A new rollout supersedes any episode: its pods and loads are about to change.
            state = state.with_(episode=None, step=0, skews=())
            return _result(
                state,
                Phase.SETTLING,
                "rollout in progress",
                min(5.0, interval),
                seen=Seen(pods=view.pods),
            )
        ready = [p.name for p in view.pods if p.ready]
        try:
            measured = await self._loads.read(pods=ready) if ready else {}
        except MetricsError as exc:
            self._events.emit(kind="Warning", reason=exc.reason, message=str(exc))
            return _result(
                state,
                Phase.DEGRADED,
                str(exc),
                interval,
                metrics=("False", exc.reason),
                seen=Seen(pods=view.pods),
            )
        values = {p: m.load for p, m in measured.items()}
        if state.last_step_at is not None and ready and measured:
            oldest = min(m.timestamp for m in measured.values())
            after = state.last_step_at + policy.actuation.window_seconds
            if oldest < after:
                return _result(
                    state,
                    Phase.COOLING_DOWN,
                    "waiting for a measurement taken after the last drain window",
                    min(5.0, interval),
                    seen=Seen(pods=view.pods, loads=values),
                )
        plan, verdict = decide(
            loads=measured,
            pods=view.pods,
            policy=policy,
            now=now,
            engaged=state.episode is not None,
        )
        state = state.with_(skew=plan.skew if ready else None)
        seen = Seen(pods=view.pods, loads=values, plan=plan)
        judged = (
            policy.balance.mode == "postRollout"
            and state.episode is None
            and state.judged_revision == view.revision
        )
        if judged and verdict is not Verdict.SETTLING:
            phase = Phase.BALANCED if verdict is Verdict.WITHIN_TOLERANCE else Phase.IDLE
            reason = (
                plan.reason
                if phase is Phase.BALANCED
                else (f"{plan.reason}; postRollout mode waits for the next rollout")
            )
            return _result(state, phase, reason, interval, balanced=plan.skew, seen=seen)
        return await self._decided(state, view, pods, plan, verdict, now, seen)

    async def _decided(
        self,
        state: ControllerState,
        view: FleetView,
        pods: Mapping[PodName, PodState],
        plan: Plan,
        verdict: Verdict,
        now: float,
        seen: Seen,
    ) -> TickResult:
        policy, interval = self._policy, self._policy.balance.step_interval_seconds
        if verdict is Verdict.SETTLING:
            return _result(state, Phase.SETTLING, plan.reason, min(5.0, interval), seen=seen)
        if verdict in (Verdict.TOO_FEW_PODS, Verdict.BELOW_MINIMUM):
            return _result(state, Phase.IDLE, plan.reason, interval, seen=seen)
        if verdict in (Verdict.MISSING_LOAD, Verdict.STALE):
            return _result(
                state,
                Phase.DEGRADED,
                plan.reason,
                interval,
                metrics=("False", verdict.value),
                seen=seen,
            )
        if verdict is Verdict.WITHIN_TOLERANCE:
            if state.episode is not None:
                self._events.emit(
                    kind="Normal",
                    reason="Balanced",
                    message=f"balanced after {state.step} step(s): {plan.reason}",
                )
            done = state.with_(episode=None, step=0, skews=(), judged_revision=view.revision)
            return _result(
                done, Phase.BALANCED, plan.reason, interval, balanced=plan.skew, seen=seen
            )
        if verdict is Verdict.CAPPED or self._stalled(state, plan.skew):
            why = (
                plan.reason
                if verdict is Verdict.CAPPED
                else (
                    f"{state.step} step(s) did not lower skew enough (now {plan.skew:.3f}); "
                    "stopping until the pool changes"
                )
            )
            self._events.emit(kind="Warning", reason="NotConverging", message=why)
            done = state.with_(episode=None, step=0, skews=(), judged_revision=view.revision)
            return _result(
                done,
                Phase.DEGRADED,
                why,
                interval,
                balanced=plan.skew,
                converging=("False", "NotConverging"),
                seen=seen,
            )
        episode = state.episode or _new_episode(self._name, view.revision, now)
        step = state.step + 1
        try:
            issued = await self._issuer.issue(
                plan=plan, pods=pods, loads=seen.loads, episode=episode, step=step, now=now
            )
        except CooldownActive as exc:
            return _result(state, Phase.COOLING_DOWN, str(exc), min(5.0, interval), seen=seen)
        except IssueRefused as exc:
            self._events.emit(kind="Warning", reason="DrainRefused", message=str(exc))
            return _result(state, Phase.DEGRADED, str(exc), interval, seen=seen)
        except ActuationError as exc:
            self._events.emit(kind="Warning", reason=exc.reason, message=str(exc))
            return _result(
                state,
                Phase.DEGRADED,
                f"could not deliver: {exc}",
                min(5.0, interval),
                ready=("False", exc.reason),
                seen=seen,
            )
        summary = ", ".join(f"{d.pod}={d.count}" for d in plan.drains)
        if policy.dry_run:
            done = state.with_(
                judged_revision=view.revision, last_action=f"dry run: would cycle {summary}"
            )
            return _result(done, Phase.IDLE, f"dryRun: {plan.reason}", interval, seen=seen)
        after = state.with_(
            episode=episode,
            step=step,
            last_step_at=now,
            skews=(*state.skews, plan.skew),
            cycled_total=state.cycled_total + sum(r.count for r in issued),
            last_action=f"step {step}: cycle {summary}",
        )
        return TickResult(
            state=after.with_(phase=Phase.REBALANCING, reason=plan.reason),
            conditions=_conditions(Phase.REBALANCING, balanced=plan.skew),
            requeue_after=self.cooldown,
            issued=issued,
            seen=seen,
        )

    def _stalled(self, state: ControllerState, skew: float) -> bool:
        balance = self._policy.balance
        if state.step >= balance.max_steps:
            return True
        window = balance.max_steps_without_improvement
        return len(state.skews) >= window and skew > state.skews[-window] * (1 - _PROGRESS)

    def _recover(
        self, state: ControllerState, newest: IssuedStep | None, now: float
    ) -> ControllerState:
        """Adopt a step the pods carry but status lost (a crash between delivery and the status
        write). Its id already sits on those pods, so it is never issued again."""
        if newest is None or (
            state.last_step_at is not None and newest.issued_at <= state.last_step_at + 1e-3
        ):
            return state
        recovered = state.with_(last_step_at=newest.issued_at)
        if now - newest.issued_at < _RESUME_HORIZON * self.cooldown:
            recovered = recovered.with_(episode=newest.episode, step=max(newest.step, state.step))
        return recovered


def _new_episode(name: PolicyName, revision: str, now: float) -> str:
    return hashlib.sha256(f"{name}|{revision}|{now:.6f}".encode()).hexdigest()[:10]


def _result(
    state: ControllerState,
    phase: Phase,
    reason: str,
    requeue_after: float,
    *,
    ready: tuple[str, str] = ("True", "Reconciling"),
    metrics: tuple[str, str] | None = None,
    converging: tuple[str, str] | None = None,
    balanced: float | None = None,
    seen: Seen | None = None,
) -> TickResult:
    return TickResult(
        state=state.with_(phase=phase, reason=reason),
        conditions=_conditions(
            phase,
            ready=ready,
            metrics=metrics,
            converging=converging,
            balanced=balanced,
            reason=reason,
        ),
        requeue_after=requeue_after,
        seen=seen or Seen(),
    )


def _conditions(
    phase: Phase,
    *,
    ready: tuple[str, str] = ("True", "Reconciling"),
    metrics: tuple[str, str] | None = None,
    converging: tuple[str, str] | None = None,
    balanced: float | None = None,
    reason: str = "",
) -> tuple[Condition, ...]:
    ready_status, ready_reason = ready
    out = [
        Condition(
            "Ready", _status(ready_status), ready_reason, reason if ready_status == "False" else ""
        )
    ]
    if metrics is not None:
        out.append(Condition("MetricsAvailable", _status(metrics[0]), metrics[1], reason))
    elif balanced is not None:
        out.append(Condition("MetricsAvailable", "True", "Measured"))
    if balanced is not None:
        ok = phase is Phase.BALANCED
        out.append(
            Condition(
                "Balanced",
                "True" if ok else "False",
                "WithinTolerance" if ok else "Skewed",
                f"skew {balanced:.3f}",
            )
        )
    if converging is not None:
        out.append(Condition("Converging", _status(converging[0]), converging[1], reason))
    elif phase is Phase.REBALANCING:
        out.append(Condition("Converging", "True", "Stepping"))
    return tuple(out)


def _status(value: str) -> Literal["True", "False", "Unknown"]:
    return "True" if value == "True" else "False" if value == "False" else "Unknown"
