"""Reading pods: what the API server says about readiness, start and the last drain request."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from connbalance.model import DRAIN_ANNOTATION, DrainRequest, InvalidDrainRequest, PodName, PodState

log = logging.getLogger(__name__)


def label_selector(selector: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in selector)


def pod_state(pod: Any) -> PodState:
    """A ``V1Pod`` as the controller sees it. A malformed drain annotation reads as none (and is
    logged): it was not written by this operator, and must never be acted on."""
    meta, status = pod.metadata, pod.status
    ready_condition = next(
        (c for c in (status.conditions or []) if c.type == "Ready") if status else iter(()), None
    )
    terminating = meta.deletion_timestamp is not None
    ready = (
        not terminating
        and status is not None
        and status.phase == "Running"
        and ready_condition is not None
        and ready_condition.status == "True"
    )
    since = _epoch(ready_condition.last_transition_time) if ready and ready_condition else None
    return PodState(
        name=PodName(meta.name),
        ready=ready,
        ready_since=since,
        uid=meta.uid or "",
        ip=status.pod_ip if status else None,
        drain=_drain((meta.annotations or {}).get(DRAIN_ANNOTATION), meta.name),
        host_ip=status.host_ip if status else None,
    )


def _drain(value: str | None, pod: str) -> DrainRequest | None:
    if not value:
        return None
    try:
        return DrainRequest.from_json(value, now=datetime.now(UTC))
    except InvalidDrainRequest as exc:
        log.warning("pod %s: ignoring malformed %s annotation: %s", pod, DRAIN_ANNOTATION, exc)
        return None


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()
