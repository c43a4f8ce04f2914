"""The Kubernetes ``Fleet``: the selected pods, and whether their workload's rollout is done.

Given a ``PodChanges``, the last view is reused while nothing in the namespace has moved (see
``connbalance.kube.podchanges``): a balanced pool costs no list call per tick."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from connbalance.kube.podchanges import PodChanges
from connbalance.kube.pods import label_selector, pod_state
from connbalance.model import WorkloadRef
from connbalance.ports import FleetError, FleetView

_T = TypeVar("_T")


class KubeFleet:
    def __init__(
        self,
        *,
        core: Any,
        apps: Any,
        namespace: str,
        selector: tuple[tuple[str, str], ...],
        workload: WorkloadRef | None,
        changes: PodChanges | None = None,
    ) -> None:
        self._core = core
        self._apps = apps
        self._namespace = namespace
        self._selector = label_selector(selector)
        self._workload = workload
        self._changes = changes
        self._key = ("fleet", namespace, self._selector, workload)

    async def observe(self) -> FleetView:
        changes = self._changes
        if changes is None:
            return await asyncio.to_thread(self._observe)
        kept = changes.reusable(self._key, self._namespace)
        if isinstance(kept, FleetView):
            return kept
        version = changes.version(self._namespace)
        view = await asyncio.to_thread(self._observe)
        changes.keep(self._key, version=version, value=view)
        return view

    def _observe(self) -> FleetView:
        listed = _read(
            f"cannot list pods {self._selector!r} in {self._namespace}",
            lambda: self._core.list_namespaced_pod(self._namespace, label_selector=self._selector),
        )
        pods = tuple(sorted((pod_state(p) for p in listed.items), key=lambda p: p.name))
        terminating = any(p.metadata.deletion_timestamp is not None for p in listed.items)
        complete = not terminating and self._workload_settled()
        revision = hashlib.sha256(",".join(sorted(p.uid for p in pods)).encode()).hexdigest()
        return FleetView(pods=pods, rollout_complete=complete, revision=revision[:16])

    def _workload_settled(self) -> bool:
        ref = self._workload
        if ref is None:
            return True
        where = f"cannot read {ref.kind} {ref.name} in {self._namespace}"
        if ref.kind == "StatefulSet":
            return statefulset_settled(
                _read(
                    where,
                    lambda: self._apps.read_namespaced_stateful_set(ref.name, self._namespace),
                )
            )
        return deployment_settled(
            _read(where, lambda: self._apps.read_namespaced_deployment(ref.name, self._namespace))
        )


def statefulset_settled(sts: Any) -> bool:
    """Every replica Ready on the update revision, as the StatefulSet controller last saw it
    (it sets currentRevision to updateRevision only once every pod runs the new one)."""
    st = sts.status
    return bool(
        (st.observed_generation or 0) >= (sts.metadata.generation or 0)
        and st.update_revision == st.current_revision
        and (st.ready_replicas or 0) == (sts.spec.replicas or 0)
    )


def deployment_settled(deploy: Any) -> bool:
    """Every replica updated and available, and none of an older ReplicaSet left."""
    st, wanted = deploy.status, deploy.spec.replicas or 0
    return bool(
        (st.observed_generation or 0) >= (deploy.metadata.generation or 0)
        and (st.updated_replicas or 0) == wanted
        and (st.replicas or 0) == wanted
        and (st.available_replicas or 0) == wanted
    )


def _read(what: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except (ApiException, HTTPError, OSError) as exc:
        raise FleetError(f"{what}: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
