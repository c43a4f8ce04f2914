"""The state machine: one ``tick`` observes, decides, issues at most one step, and says when to
come back. Its gates, in order, each a method: the pool is readable and not busy (``_busy``),
its load readable (pods too new to be scraped, and scrape gaps, wait: ``scrapelag``) and
measured after the last window (``waits.measured_too_early``) and the cycled clients' return
(``_reconnects_pending``), the pool not judged already (``judged``); then the verdict is a phase
(``_decided``) or a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from connbalance.controller import arrivals
from connbalance.controller.issuer import (
    CooldownActive,
    DrainIssuer,
    IssueRefused,
    RecordingActuator,
)
from connbalance.controller.judged import already_judged, stalled
from connbalance.controller.recovery import recover
from connbalance.controller.results import (
    Seen,
    TickResult,
    conditions_for,
    tick_result,
)
from connbalance.controller.scrapelag import LastReadings, Pace, metrics_failed
from connbalance.controller.state import ControllerState, new_episode_id, newest_step
from connbalance.controller.waits import measured_too_early, until_settled
from connbalance.model import DrainRequest, Phase, Plan, PodLoad, PodName, Policy, PolicyName
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

# While something is about to change (a rollout, a window closing), look again at least this often.
_SOON = 5.0
# Stuck short of targetTolerance but within tolerance: the target is out of reach, not balance.
_WITHIN_BUT_STUCK = "skew %.3f within 1 + tolerance; no step brings it nearer targetTolerance"
# The longest wait for a step's cycled clients to come back, in cooldowns after the step.
_ARRIVAL_COOLDOWNS = 2


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
        readings: LastReadings | None = None,
    ) -> None:
        """``readings``: each pod's last good reading, kept by the caller across ticks (see
        ``scrapelag``); without it a pod missing for one scrape is an error at once."""
        self._name = name
        self._readings = readings if readings is not None else LastReadings()
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
    def _interval(self) -> float:
        return self._policy.balance.step_interval_seconds

    @property
    def _soon(self) -> float:
        return min(_SOON, self._interval)

    async def tick(self, state: ControllerState) -> TickResult:
        """Observe the pool and its load, decide, and issue at most one step."""
        now = self._clock()
        if self._policy.paused:
            return tick_result(state, Phase.PAUSED, "spec.paused is true", self._interval)
        try:
            view = await self._fleet.observe()
        except FleetError as exc:
            return tick_result(
                state,
                Phase.DEGRADED,
                f"cannot read the pool: {exc}",
                self._interval,
                ready=("False", exc.reason),
            )
        newest = newest_step(view.pods, policy=self._name)
        state = recover(state, newest, now=now, cooldown=self._issuer.cooldown)
        busy = self._busy(state, view, now)
        if busy is not None:
            return busy
        ready = [p.name for p in view.pods if p.ready]
        try:
            measured = await self._loads.read(pods=ready) if ready else {}
        except MetricsError as exc:
            return metrics_failed(exc, state, view.pods, readings=self._readings,
                                  policy=self._policy, now=now, events=self._events,
                                  pace=Pace(soon=self._soon, interval=self._interval))
        self._readings.note(view.pods, measured)
        seen = Seen(pods=view.pods, loads={p: m.load for p, m in measured.items()})
        window = self._policy.actuation.window_seconds
        early = measured_too_early(
            state, measured, seen, now=now, window=window, most=self._soon
        ) or self._reconnects_pending(state, measured, seen, now)
        if early is not None:
            return early
        plan, verdict, planned = self._decide(state, view, measured, now)
        state = state.with_(skew=plan.skew if ready else None)
        seen = replace(
            seen,
            plan=plan,
            planned=None if planned is measured else {p: m.load for p, m in planned.items()},
        )
        judged = already_judged(
            state,
            revision=view.revision,
            plan=plan,
            verdict=verdict,
            seen=seen,
            now=now,
            policy=self._policy,
        )
        if judged is not None:
            return judged
        return await self._decided(state, view, plan, verdict, now, seen)

    def _busy(self, state: ControllerState, view: FleetView, now: float) -> TickResult | None:
        """A step still in flight, or a rollout under way: nothing to judge yet."""
        cooldown = self._issuer.cooldown
        if state.last_step_at is not None and now < state.last_step_at + cooldown:
            wait = state.last_step_at + cooldown - now
            return tick_result(
                state,
                Phase.COOLING_DOWN,
                f"step {state.step} in flight; next measurement in {wait:.0f}s",
                max(1.0, wait),
                seen=Seen(pods=view.pods),
            )
        if not view.rollout_complete:
            # A new rollout supersedes any episode: its pods and loads are about to change.
            state = state.with_(episode=None, step=0, skews=())
            return tick_result(
                state,
                Phase.SETTLING,
                "rollout in progress",
                self._soon,
                seen=Seen(pods=view.pods),
            )
        return None

    def _away(self, state: ControllerState, measured: Mapping[PodName, PodLoad]) -> float:
        """The last step's cycled clients not back yet (see ``arrivals``), or 0."""
        if state.episode is None or state.step_total is None:
            return 0.0
        return arrivals.still_away(
            step_total=state.step_total,
            measured=measured,
            target_tolerance=self._policy.balance.target_tolerance,
        )

    def _reconnects_pending(
        self, state: ControllerState, measured: Mapping[PodName, PodLoad], seen: Seen, now: float
    ) -> TickResult | None:
        """Wait for the last step's cycled clients while they are still arriving: until the
        total has not risen for a step interval, and at most _ARRIVAL_COOLDOWNS cooldowns after
        the step. Those still away then are planned as landing evenly (``_decide``)."""
        away = self._away(state, measured)
        if not away or state.last_step_at is None:
            return None
        total = sum(m.load for m in measured.values())
        best = state.arriving_total
        rising_at = now if best is None or total > best else state.arriving_at or now
        if (
            now - rising_at >= self._interval
            or now >= state.last_step_at + _ARRIVAL_COOLDOWNS * self._issuer.cooldown
        ):
            return None
        waiting = state.with_(arriving_total=max(total, best or total), arriving_at=rising_at)
        return tick_result(
            waiting,
            Phase.COOLING_DOWN,
            f"waiting for {away:.0f} cycled client(s) to reconnect: the pool holds "
            f"{total:g} of the {state.step_total:g} it held at step {state.step}",
            min(self._soon, self._interval),
            seen=seen,
        )

    def _decide(
        self,
        state: ControllerState,
        view: FleetView,
        measured: Mapping[PodName, PodLoad],
        now: float,
    ) -> tuple[Plan, Verdict, Mapping[PodName, PodLoad]]:
        """The planner's verdict, on the loads expected once the clients still away land."""
        away = self._away(state, measured)
        planned = arrivals.landed_evenly(measured, away) if away else measured
        plan, verdict = decide(
            loads=planned,
            pods=view.pods,
            policy=self._policy,
            now=now,
            engaged=state.episode is not None,
        )
        if away:
            plan = replace(
                plan,
                reason=f"{plan.reason}; counting {away:.0f} cycled client(s) still reconnecting "
                "as landing evenly",
            )
        return plan, verdict, planned

    async def _decided(
        self,
        state: ControllerState,
        view: FleetView,
        plan: Plan,
        verdict: Verdict,
        now: float,
        seen: Seen,
    ) -> TickResult:
        """The planner's verdict as a phase; on Act, the next step."""
        if verdict is Verdict.SETTLING:
            wait = until_settled(
                view.pods, now=now, settle=self._policy.balance.settle_seconds, most=self._soon
            )
            return tick_result(state, Phase.SETTLING, plan.reason, wait, seen=seen)
        if verdict in (Verdict.TOO_FEW_PODS, Verdict.BELOW_MINIMUM):
            return tick_result(state, Phase.IDLE, plan.reason, self._interval, seen=seen)
        if verdict in (Verdict.MISSING_LOAD, Verdict.STALE):
            return tick_result(
                state,
                Phase.DEGRADED,
                plan.reason,
                self._interval,
                metrics=("False", verdict.value),
                seen=seen,
            )
        if verdict is Verdict.WITHIN_TOLERANCE:
            return self._balanced(state, view, plan, seen)
        stuck = verdict is Verdict.CAPPED or stalled(state, plan.skew, self._policy)
        if stuck and plan.skew <= 1 + self._policy.balance.tolerance:
            return self._balanced(state, view, plan, seen, reason=_WITHIN_BUT_STUCK % plan.skew)
        if verdict is Verdict.CAPPED:
            return self._give_up(state, view, plan, plan.reason, seen, now)
        if stuck:
            why = (
                f"{state.step} step(s) did not lower skew enough (now {plan.skew:.3f}); "
                "stopping until the pool changes"
            )
            return self._give_up(state, view, plan, why, seen, now)
        return await self._step(state, view, plan, now, seen)

    def _balanced(
        self, state: ControllerState, view: FleetView, plan: Plan, seen: Seen, reason: str = ""
    ) -> TickResult:
        """Within tolerance: the episode, if any, ends, and this pool revision is judged."""
        reason = reason or plan.reason
        if state.episode is not None:
            self._events.emit(
                kind="Normal",
                reason="Balanced",
                message=f"balanced after {state.step} step(s): {reason}",
            )
        done = state.with_(
            episode=None, step=0, skews=(), judged_revision=view.revision, held_until=None
        )
        # Looked at again less often than a pool being stepped: a change to it wakes the loop.
        return tick_result(
            done,
            Phase.BALANCED,
            reason,
            self._policy.balance.recheck_seconds,
            balanced=plan.skew,
            seen=seen,
        )

    def _give_up(
        self,
        state: ControllerState,
        view: FleetView,
        plan: Plan,
        why: str,
        seen: Seen,
        now: float,
    ) -> TickResult:
        """No step helps (the caps leave none, or steps stopped lowering skew): stop, say so,
        and wait for the pool to change rather than churn."""
        self._events.emit(kind="Warning", reason="NotConverging", message=why)
        hold = self._policy.balance.max_steps * self._interval
        done = state.with_(
            episode=None, step=0, skews=(), judged_revision=view.revision, held_until=now + hold
        )
        return tick_result(
            done,
            Phase.DEGRADED,
            why,
            self._interval,
            balanced=plan.skew,
            converging=("False", "NotConverging"),
            seen=seen,
        )

    async def _step(
        self, state: ControllerState, view: FleetView, plan: Plan, now: float, seen: Seen
    ) -> TickResult:
        """Issue the plan as the next step of the current episode (or of a new one)."""
        episode = state.episode or new_episode_id(self._name, view.revision, now)
        step = state.step + 1
        try:
            issued = await self._issuer.issue(
                plan=plan,
                pods={p.name: p for p in view.pods},
                loads=seen.loads if seen.planned is None else seen.planned,
                episode=episode,
                step=step,
                now=now,
            )
        except CooldownActive as exc:
            return tick_result(state, Phase.COOLING_DOWN, str(exc), self._soon, seen=seen)
        except IssueRefused as exc:
            self._events.emit(kind="Warning", reason="DrainRefused", message=str(exc))
            return tick_result(state, Phase.DEGRADED, str(exc), self._interval, seen=seen)
        except ActuationError as exc:
            self._events.emit(kind="Warning", reason=exc.reason, message=str(exc))
            return tick_result(
                state,
                Phase.DEGRADED,
                f"could not deliver: {exc}",
                self._soon,
                ready=("False", exc.reason),
                seen=seen,
            )
        return self._stepped(state, view, plan, issued, now, seen, episode=episode, step=step)

    def _stepped(
        self,
        state: ControllerState,
        view: FleetView,
        plan: Plan,
        issued: tuple[DrainRequest, ...],
        now: float,
        seen: Seen,
        *,
        episode: str,
        step: int,
    ) -> TickResult:
        """Record a delivered step (or, in dry run, what it would have been)."""
        summary = ", ".join(f"{d.pod}={d.count}" for d in plan.drains)
        if self._policy.dry_run:
            done = state.with_(
                judged_revision=view.revision, last_action=f"dry run: would cycle {summary}"
            )
            idle = tick_result(
                done, Phase.IDLE, f"dryRun: {plan.reason}", self._interval, seen=seen
            )
            return replace(idle, would_issue=issued)
        after = state.with_(
            episode=episode,
            step=step,
            last_step_at=now,
            skews=(*state.skews, plan.skew),
            requested_total=state.requested_total + sum(r.count for r in issued),
            held_until=None,
            step_total=sum(seen.loads.values()),
            arriving_total=None,
            arriving_at=None,
            last_action=f"step {step}: cycle {summary}",
        )
        return TickResult(
            state=after.with_(phase=Phase.REBALANCING, reason=plan.reason),
            conditions=conditions_for(Phase.REBALANCING, balanced=plan.skew),
            requeue_after=self._issuer.cooldown,
            issued=issued,
            seen=seen,
        )
