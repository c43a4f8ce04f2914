"""The kopf handlers: one timer per ConnectionBalancer runs one controller tick.

Thin on purpose: build the adapters from the spec, tick, write status. The controller's memory
goes to ``status.controller`` and comes back on the next tick; the durable facts stay on the pods.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import kopf
from kubernetes import client

from connbalance.controller import Controller, ControllerState
from connbalance.kube.actuator import AnnotationActuator, HttpActuator
from connbalance.kube.crd import GROUP, PLURAL, VERSION
from connbalance.kube.fleet import KubeFleet
from connbalance.kube.metrics import record
from connbalance.kube.secrets import SpecError, read_secret
from connbalance.kube.status import conditions, status_patch
from connbalance.model import (
    MetricsSpec,
    Phase,
    Policy,
    PolicyError,
    PolicyName,
)
from connbalance.ports import Actuator
from connbalance.prometheus import PrometheusLoadSource

log = logging.getLogger(__name__)

TICK_SECONDS = float(os.environ.get("CONNBALANCE_TICK_SECONDS", "5"))


@dataclass(slots=True)
class KopfEvents:
    """Events on the ConnectionBalancer, posted by kopf's background poster."""

    body: Any
    posted: list[str] = field(default_factory=list)

    def emit(self, *, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        kopf.event(self.body, type=kind, reason=reason, message=message[:1000])
        self.posted.append(reason)


@functools.cache
def _private_dir() -> str:
    """A directory only this process can write, made once: never a predictable shared path."""
    return tempfile.mkdtemp(prefix="connbalance-")


def _ca_file(bundle: str) -> str:
    digest = hashlib.sha256(bundle.encode()).hexdigest()[:16]
    path = os.path.join(_private_dir(), f"ca-{digest}.pem")
    if not os.path.exists(path):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(bundle)
    return path


@functools.lru_cache(maxsize=256)
def _load_source(
    metrics: MetricsSpec,
    namespace: str,
    selector: tuple[tuple[str, str], ...],
    token: str | None,
    ca: str | None,
) -> PrometheusLoadSource:
    """One source per distinct setting, kept across ticks: building one checks files and warns
    about skip-verify, which should happen once, not every few seconds."""
    return PrometheusLoadSource.from_spec(
        metrics, namespace=namespace, selector=selector, bearer_token=token, ca_file=ca
    )


def build_controller(
    *, name: PolicyName, namespace: str, policy: Policy, body: Any, core: Any, apps: Any
) -> Controller:
    metrics = policy.metrics
    token = ca = None
    if metrics.bearer_token_secret is not None:
        token = read_secret(
            core,
            namespace,
            metrics.bearer_token_secret,
            "spec.metrics.prometheus.bearerTokenSecret",
        )
    if metrics.ca_secret is not None:
        ca = _ca_file(
            read_secret(core, namespace, metrics.ca_secret, "spec.metrics.prometheus.caSecret")
        )
    try:
        loads = _load_source(metrics, namespace, policy.selector, token, ca)
    except ValueError as exc:
        raise SpecError(f"spec.metrics: {exc}") from exc
    annotate = AnnotationActuator(core=core, namespace=namespace)
    actuator: Actuator = annotate
    if policy.actuation.method == "http":
        if policy.actuation.token_secret is None:
            raise SpecError("spec.actuation.tokenSecret: required when method is http")
        agent_token = read_secret(
            core, namespace, policy.actuation.token_secret, "spec.actuation.tokenSecret"
        )
        actuator = HttpActuator(
            annotate=annotate, port=policy.actuation.agent_port, token=agent_token
        )
    return Controller(
        name=name,
        policy=policy,
        loads=loads,
        fleet=KubeFleet(
            core=core,
            apps=apps,
            namespace=namespace,
            selector=policy.selector,
            workload=policy.workload_ref,
        ),
        actuator=actuator,
        events=KopfEvents(body),
        clock=time.time,
    )


async def reconcile(
    *,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    generation: int | None,
    body: Any,
    core: Any,
    apps: Any,
) -> dict[str, Any]:
    """One tick for one resource. Returns the status to write."""
    policy_name = PolicyName(f"{namespace}/{name}")
    previous = status if isinstance(status, Mapping) else {}
    try:
        policy = Policy.from_spec(dict(spec))
        controller = build_controller(
            name=policy_name, namespace=namespace, policy=policy, body=body, core=core, apps=apps
        )
    except (PolicyError, SpecError) as exc:
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
        from connbalance.controller import Condition

        return {
            "phase": Phase.DEGRADED.value,
            "reason": str(exc),
            "observedGeneration": generation,
            "conditions": conditions(
                [Condition("Ready", "False", "InvalidSpec", str(exc))],
                previous.get("conditions") or [],
                generation=generation,
            ),
        }
    state = ControllerState.from_status(previous.get("controller"))
    result = await controller.tick(state)
    record(policy_name, result)
    return status_patch(result, policy=policy_name, generation=generation, previous=previous)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.persistence.finalizer = "connbalance.io/finalizer"
    settings.watching.server_timeout = 300


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, initial_delay=1.0)
async def tick(
    *,
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    core, apps = client.CoreV1Api(), client.AppsV1Api()
    new_status = await reconcile(
        name=name,
        namespace=namespace or "default",
        spec=spec,
        status=dict(status),
        generation=meta.get("generation"),
        body=body,
        core=core,
        apps=apps,
    )
    for key, value in new_status.items():
        patch.status[key] = value
