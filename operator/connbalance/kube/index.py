"""Which balancer a watched pod or workload concerns, and whether its change is worth a wake.

Pure bookkeeping over what the watches deliver: no I/O. A balancer is indexed by the labels it
selects and the workload it names, read straight from its spec (a spec too broken to read
selects nothing, and its own reconcile says why). A pod wakes its balancers when it comes,
goes, or changes readiness or restart count; a workload when its rollout has just finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (namespace, name) of a ConnectionBalancer


@dataclass(frozen=True, slots=True)
class Watched:
    """What one balancer's loop must hear about."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    workload: tuple[str, str] | None  # (kind, name)

    @classmethod
    def from_spec(cls, namespace: str, spec: Mapping[str, Any]) -> Watched:
        selector = spec.get("selector") if isinstance(spec, Mapping) else None
        labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
        ref = spec.get("workloadRef") if isinstance(spec, Mapping) else None
        workload = None
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            workload = (str(ref.get("kind") or "Deployment"), str(ref["name"]))
        pairs = tuple(sorted((str(k), str(v)) for k, v in labels.items())) if labels else ()
        return cls(namespace=namespace, labels=pairs, workload=workload)

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return (
            bool(self.labels)
            and namespace == self.namespace
            and all(labels.get(k) == v for k, v in self.labels)
        )


@dataclass(frozen=True, slots=True)
class PodSummary:
    """The parts of a pod whose change can change a balancer's verdict."""

    ready: bool
    restarts: int
    terminating: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodSummary:
        status = body.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        containers = status.get("containerStatuses") or []
        restarts = sum(int(c.get("restartCount") or 0) for c in containers)
        terminating = bool((body.get("metadata") or {}).get("deletionTimestamp"))
        return cls(ready=conditions.get("Ready") == "True", restarts=restarts,
                   terminating=terminating)


def rollout_complete(kind: str, body: Mapping[str, Any]) -> bool:
    """A Deployment or StatefulSet whose controller has caught up and whose every replica is
    updated, ready and available."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    status = body.get("status") or {}
    wanted = int(spec.get("replicas", 1) or 0)
    caught_up = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    counts = [int(status.get(k) or 0) for k in ("updatedReplicas", "readyReplicas")]
    available = int(status.get("availableReplicas") or 0)
    if kind == "StatefulSet" and status.get("currentRevision") != status.get("updateRevision"):
        return False
    return caught_up and all(c == wanted for c in counts) and available == wanted


@dataclass(slots=True)
class BalancerIndex:
    balancers: dict[Key, Watched] = field(default_factory=dict)
    _pods: dict[str, PodSummary] = field(default_factory=dict)
    _rollouts: dict[tuple[str, str, str], bool] = field(default_factory=dict)

    def put(self, key: Key, watched: Watched) -> None:
        self.balancers[key] = watched

    def drop(self, key: Key) -> None:
        self.balancers.pop(key, None)

    def for_pod(self, namespace: str, labels: Mapping[str, str]) -> list[Key]:
        return sorted(k for k, w in self.balancers.items() if w.selects(namespace, labels))

    def for_workload(self, namespace: str, kind: str, name: str) -> list[Key]:
        return sorted(
            k
            for k, w in self.balancers.items()
            if w.namespace == namespace and w.workload == (kind, name)
        )

    def knows_pod(self, uid: str) -> bool:
        """The pod was selected when last seen."""
        return uid in self._pods

    def pod_changed(self, uid: str, summary: PodSummary | None) -> bool:
        """Record a pod's summary (None: it is gone); True when that is news."""
        before = self._pods.pop(uid, None) if summary is None else self._pods.get(uid)
        if summary is not None:
            self._pods[uid] = summary
        return before != summary

    def rollout_finished(self, namespace: str, kind: str, name: str, complete: bool) -> bool:
        """Record a workload's rollout state; True only when it has just become complete."""
        key = (namespace, kind, name)
        before = self._rollouts.get(key)
        self._rollouts[key] = complete
        return complete and before is False
