"""Wiring: the controller of one ConnectionBalancer, with its adapters built from the spec.

Secrets are read by name here (and only here), a CA bundle from a Secret goes to a private file
(Prometheus's) or into a TLS context (the agents'), and one Prometheus load source and one TLS
context are kept per distinct setting across reconciles, and each balancer's pods' last good
readings (``LastReadings``: how a scrape gap is told from a pod gone missing) per balancer.
"""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Final

from connbalance.controller import Controller, LastReadings
from connbalance.kube.actuator import AnnotationActuator, HttpActuator
from connbalance.kube.agenttls import AgentTls
from connbalance.kube.confirm import AgentStatusReader, Confirmations, NodeAgentStatusReader
from connbalance.kube.confirmprom import PrometheusConfirmations
from connbalance.kube.fleet import KubeFleet
from connbalance.kube.gates import GatedActuator, PodConditionGate
from connbalance.kube.podchanges import PodChanges
from connbalance.kube.secrets import SpecError, read_secret
from connbalance.model import ActuationSpec, MetricsSpec, Policy, PolicyName
from connbalance.ports import Actuator, EventSink
from connbalance.ports.gates import ReadinessGate
from connbalance.prometheus import PrometheusLoadSource

# Where balancers that name no Prometheus look, unless `connbalance run --default-prometheus-url`
# says otherwise: the address of the prometheus-community chart's server in "monitoring".
DEFAULT_PROMETHEUS_URL: Final = "http://prometheus-server.monitoring.svc:80"


@dataclass(frozen=True, slots=True)
class Wired:
    controller: Controller
    confirmations: Confirmations | None  # None: no way to ask the agents


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


@functools.lru_cache(maxsize=4096)
def _last_readings(name: PolicyName) -> LastReadings:
    """One per balancer, kept across reconciles (the controller is rebuilt each time). Bounded:
    a balancer pushed out, or deleted, only forgets when its pods were last read."""
    return LastReadings()


@functools.lru_cache(maxsize=64)
def _agent_context(ca_bundle: str | None) -> ssl.SSLContext:
    """One context per CA bundle, kept across ticks. Verification and the hostname check stay on
    (``create_default_context``): a bundle given replaces the system CAs rather than adding to
    them, so only the CA that signs the agents is trusted with their token."""
    if ca_bundle is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cadata=ca_bundle)


def _agent_tls(actuation: ActuationSpec, *, core: Any, namespace: str) -> AgentTls | None:
    """How to verify the agents with ``agentScheme: https`` (None with http). Raises SpecError
    when the CA Secret cannot be read or holds no certificate."""
    if actuation.agent_scheme != "https":
        return None
    ref = actuation.ca_secret
    if ref is None:
        return AgentTls(context=_agent_context(None), server_name=actuation.agent_server_name)
    bundle = read_secret(core, namespace, ref, "spec.actuation.caSecret")
    where = f"spec.actuation.caSecret: Secret {namespace}/{ref.name} key {ref.key!r}"
    if not bundle:  # an empty bundle loads, and then trusts no agent at all
        raise SpecError(f"{where} is empty")
    try:
        context = _agent_context(bundle)
    except (ssl.SSLError, ValueError) as exc:
        raise SpecError(f"{where} holds no PEM CA certificate ({exc})") from exc
    return AgentTls(context=context, server_name=actuation.agent_server_name)


def _confirmations_without_http(
    policy: Policy, *, namespace: str, loads: PrometheusLoadSource, node_agent_port: int
) -> Confirmations | None:
    """Where confirmations come from when no request is POSTed: the node agent's HTTP port on
    the pod's node (if the operator was told it), else the sidecars' metrics in Prometheus."""
    if policy.actuation.agent == "node":
        if not node_agent_port:
            return None
        return NodeAgentStatusReader(port=node_agent_port, namespace=namespace)
    return PrometheusConfirmations(
        connection=loads.connection,
        namespace=namespace,
        pod_label=policy.metrics.pod_label,
        grace_seconds=policy.metrics.max_staleness_seconds,
    )


def build_controller(
    *,
    name: PolicyName,
    namespace: str,
    policy: Policy,
    events: EventSink,
    core: Any,
    apps: Any,
    default_prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    node_agent_port: int = 0,
    changes: PodChanges | None = None,
) -> Wired:
    """The controller for one balancer, its adapters built from the spec, and where the agents'
    confirmations come from (``node_agent_port`` 0: no node agent to ask). With ``changes``
    (what the watches saw move) the pool is listed only when something moved. Raises SpecError
    when something the spec names (a Secret, a key, a file) cannot be used."""
    metrics = policy.metrics
    if metrics.url is None:
        metrics = replace(metrics, url=default_prometheus_url)
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
    annotate = AnnotationActuator(core=core, namespace=namespace, changes=changes)
    actuator: Actuator = annotate
    reader: Confirmations | None = _confirmations_without_http(
        policy, namespace=namespace, loads=loads, node_agent_port=node_agent_port
    )
    if policy.actuation.method == "http":
        if policy.actuation.token_secret is None:
            raise SpecError("spec.actuation.tokenSecret: required when method is http")
        agent_token = read_secret(
            core, namespace, policy.actuation.token_secret, "spec.actuation.tokenSecret"
        )
        tls = _agent_tls(policy.actuation, core=core, namespace=namespace)
        actuator = HttpActuator(
            annotate=annotate, port=policy.actuation.agent_port, token=agent_token, tls=tls
        )
        reader = AgentStatusReader(port=policy.actuation.agent_port, token=agent_token, tls=tls)
    if policy.actuation.steering == "readinessGate":
        gate = readiness_gate(core=core, namespace=namespace, policy=policy, changes=changes)
        actuator = GatedActuator(actuator=actuator, gate=gate, events=events)
    controller = Controller(
        name=name,
        policy=policy,
        loads=loads,
        fleet=KubeFleet(
            core=core,
            apps=apps,
            namespace=namespace,
            selector=policy.selector,
            workload=policy.workload_ref,
            changes=changes,
        ),
        actuator=actuator,
        events=events,
        clock=time.time,
        readings=_last_readings(name),
    )
    return Wired(controller=controller, confirmations=reader)


def readiness_gate(
    *, core: Any, namespace: str, policy: Policy, changes: PodChanges | None = None
) -> ReadinessGate:
    """The readiness gate of the balancer's pool (``connbalance.kube.gates``)."""
    return PodConditionGate(core=core, namespace=namespace, selector=policy.selector,
                            window_seconds=policy.actuation.window_seconds, changes=changes)
