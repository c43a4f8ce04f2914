"""What a tick hands back: the state to persist, its conditions, and when to come back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from connbalance.controller.state import Condition, ControllerState
from connbalance.model import DrainRequest, Phase, Plan, PodName, PodState


@dataclass(frozen=True, slots=True)
class Seen:
    """What one tick observed, carried into its result for status and display."""

    pods: tuple[PodState, ...] = ()
    loads: Mapping[PodName, float] = field(default_factory=dict)
    plan: Plan | None = None
    # What the plan was made on, if not ``loads``: with a step's clients still away counted as
    # landed (``arrivals``). The caps hold against these.
    planned: Mapping[PodName, float] | None = None


@dataclass(frozen=True, slots=True)
class TickResult:
    state: ControllerState
    conditions: tuple[Condition, ...]
    requeue_after: float
    seen: Seen = field(default_factory=Seen)
    issued: tuple[DrainRequest, ...] = ()
    # In dry run, what would have been issued: told in Events on the pods, delivered nowhere.
    would_issue: tuple[DrainRequest, ...] = ()
    # Why a tick that waits without a word (``unchanged``) waited: for the logs, not for status.
    waiting: str = ""

    @property
    def plan(self) -> Plan | None:
        return self.seen.plan


def unchanged(state: ControllerState, why: str, requeue_after: float) -> TickResult:
    """A tick that saw nothing worth telling: the same state, no condition spoken about, no pod
    seen, so the status written from it is the status already there."""
    return TickResult(state=state, conditions=(), requeue_after=requeue_after, waiting=why)


def tick_result(
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
    """A tick that ends in ``phase`` for ``reason``, with nothing issued."""
    return TickResult(
        state=state.with_(phase=phase, reason=reason),
        conditions=conditions_for(
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


def conditions_for(
    phase: Phase,
    *,
    ready: tuple[str, str] = ("True", "Reconciling"),
    metrics: tuple[str, str] | None = None,
    converging: tuple[str, str] | None = None,
    balanced: float | None = None,
    reason: str = "",
) -> tuple[Condition, ...]:
    """The conditions a tick speaks about; those it leaves out keep their previous value."""
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
