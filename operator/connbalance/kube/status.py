"""What a tick becomes in the resource's status: phase, skew, per-pod load, conditions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from connbalance.controller import Condition, TickResult
from connbalance.model import PolicyName


def status_patch(
    result: TickResult,
    *,
    policy: PolicyName,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    state, seen = result.state, result.seen
    mean = seen.plan.mean if seen.plan is not None else None
    pods = [
        {
            "name": pod.name,
            "ready": pod.ready,
            **({"load": seen.loads[pod.name]} if pod.name in seen.loads else {}),
            **({"target": round(mean, 3)} if mean is not None and pod.ready else {}),
            **(
                {"lastDrain": pod.drain.id}
                if pod.drain is not None and pod.drain.policy == policy
                else {}
            ),
        }
        for pod in seen.pods
    ]
    return {
        "phase": state.phase.value,
        "skew": None if state.skew is None else round(state.skew, 4),
        "podCount": len(seen.pods) if seen.pods else (previous or {}).get("podCount"),
        "lastAction": state.last_action,
        "reason": state.reason,
        "observedGeneration": generation,
        "conditions": conditions(
            result.conditions,
            (previous or {}).get("conditions") or [],
            generation=generation,
            now=now,
        ),
        "pods": pods if seen.pods else (previous or {}).get("pods", []),
        "controller": state.to_status(),
    }


def conditions(
    current: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]],
    *,
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """metav1.Conditions: lastTransitionTime moves only when a condition's status changes; a
    condition this tick did not speak about keeps its previous value."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    merged: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in before.items()}
    for condition in current:
        old = before.get(condition.type)
        changed = old is None or old.get("status") != condition.status
        merged[condition.type] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": (
                old.get("lastTransitionTime", stamp) if old is not None and not changed else stamp
            ),
            "observedGeneration": generation,
        }
    order = ["Ready", "MetricsAvailable", "Balanced", "Converging", "Paused"]
    return [merged[t] for t in order if t in merged]
