"""The kopf handlers of ``connbalance run``: watches that feed one loop per ConnectionBalancer.

No timers and no daemons, so no finalizer: deleting a ConnectionBalancer (or the namespace, or
the operator) never waits for this operator to be running. Watch events only keep an index of
what each balancer selects and wake its loop (``connbalance.kube.loops``):
- a balancer appears, or its generation or pause annotation changes (not its status: that is
  our own write); every event of a balancer is also kept (``connbalance.kube.balancers``), so
  a loop reads its balancer from there rather than with a GET per tick;
- a selected pod comes, goes, or changes readiness or restart count;
- its workload's rollout has just finished.
Any event of a selected pod or a named workload also bumps its namespace's version in
``PodChanges``, so a loop lists its pool only when something there moved. Otherwise each loop
sleeps for as long as its controller asked. Only the holder of the leader Lease runs loops;
losing it stops them all at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from aiohttp import web
from kubernetes import client

from connbalance.kube import metrics
from connbalance.kube.balancers import Balancers
from connbalance.kube.crd import GROUP, PLURAL, VERSION
from connbalance.kube.events import Kind
from connbalance.kube.index import BalancerIndex, PodSummary, Watched, rollout_complete
from connbalance.kube.leader import LeaseElector, Timing
from connbalance.kube.loops import Key, Loops
from connbalance.kube.podchanges import PodChanges
from connbalance.kube.reconcile import PAUSE_ANNOTATION, Apis, reconcile
from connbalance.kube.serving import serve
from connbalance.kube.wiring import DEFAULT_PROMETHEUS_URL

log = logging.getLogger(__name__)

LEGACY_FINALIZER = "connbalance.io/finalizer"


@dataclass(slots=True)
class Options:
    """Set by ``connbalance run`` before kopf starts."""

    default_prometheus_url: str = DEFAULT_PROMETHEUS_URL
    lease_namespace: str | None = None  # None: no election, this instance leads
    lease_name: str = "connbalance-leader"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    timing: Timing = field(default_factory=Timing)
    metrics: tuple[str, int] | None = None  # where /metrics and /readyz are served
    node_agent_port: int = 0  # the node agent's port on every node; 0: none deployed


OPTIONS = Options()


@dataclass(slots=True)
class Runtime:
    apis: Apis
    loops: Loops
    index: BalancerIndex = field(default_factory=BalancerIndex)
    seen: dict[Key, tuple[Any, str | None]] = field(default_factory=dict)
    leading: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    elector_task: asyncio.Task[None] | None = None
    server: web.AppRunner | None = None
    stopping: set[asyncio.Future[None]] = field(default_factory=set)
    # A context kopf set up for one of its handlers. kopf.event() works only where kopf set its
    # posting context variables (its per-object handling), so a balancer's loop must be started
    # in such a context, not in the leader election's task, where a standby becomes the leader.
    handler_context: contextvars.Context | None = None
    announce_leading: bool = False  # became the leader; its Event not posted yet


RUNTIME: Runtime | None = None


def _post_event(ref: Mapping[str, Any], kind: Kind, reason: str, message: str) -> None:
    kopf.event(cast(Any, dict(ref)), type=kind, reason=reason, message=message)


def _start_leading() -> None:
    runtime = _runtime()
    runtime.leading = True
    if runtime.apis.balancers is not None:
        # A term starts from the API server's status: the last leader may have written since.
        runtime.apis.balancers.forget_status()
    runtime.announce_leading = OPTIONS.lease_namespace is not None
    metrics.LEADER.set(1)
    _announce_leading(runtime)
    for key in sorted(runtime.index.balancers):
        # Seen in the index means seen by a handler, so its context is there.
        _in_handler_context(runtime, runtime.loops.ensure, key)


def _in_handler_context(runtime: Runtime, call: Any, *args: Any) -> None:
    if runtime.handler_context is None:
        call(*args)
    else:
        runtime.handler_context.run(call, *args)


def _remember_handler_context(runtime: Runtime) -> None:
    """Called in kopf's handlers: keep one context where kopf.event() works."""
    if runtime.handler_context is None:
        runtime.handler_context = contextvars.copy_context()
    _announce_leading(runtime)


def _announce_leading(runtime: Runtime) -> None:
    """A ``LeaderElected`` Event on the Lease, once a context to post it from is known."""
    if not runtime.announce_leading or runtime.handler_context is None:
        return
    runtime.announce_leading = False
    ref = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": OPTIONS.lease_name, "namespace": OPTIONS.lease_namespace}}
    message = f"{OPTIONS.identity} became the leader and acts for every ConnectionBalancer"
    _in_handler_context(runtime, _post_event, ref, "Normal", "LeaderElected", message)


def _stop_leading() -> None:
    runtime = _runtime()
    runtime.leading = False
    metrics.LEADER.set(0)
    if runtime.apis.balancers is not None:
        runtime.apis.balancers.forget_status()  # another leader writes it now
    # At once, before another instance may take the Lease: cancelling a loop cancels any
    # request it was about to write.
    for key in runtime.loops.active():
        stopping = asyncio.ensure_future(runtime.loops.stop(key))
        runtime.stopping.add(stopping)
        stopping.add_done_callback(runtime.stopping.discard)


def _runtime() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("the operator has not started")
    return RUNTIME


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global RUNTIME
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    apis = Apis(
        core=client.CoreV1Api(),
        apps=client.AppsV1Api(),
        custom=client.CustomObjectsApi(),
        post_event=_post_event,
        default_prometheus_url=OPTIONS.default_prometheus_url,
        node_agent_port=OPTIONS.node_agent_port,
        changes=PodChanges(),
        balancers=Balancers(),
    )

    async def run_one(key: Key) -> float | None:
        return await reconcile(key, apis)

    loops = Loops(reconcile=run_one, on_error=lambda key, exc: metrics.record_error("/".join(key)))
    RUNTIME = Runtime(apis=apis, loops=loops)
    if OPTIONS.metrics is not None:
        host, port = OPTIONS.metrics
        RUNTIME.server = await serve(
            host=host, port=port, registry=metrics.REGISTRY, ready=RUNTIME.ready
        )
    if OPTIONS.lease_namespace is None:
        _start_leading()
        RUNTIME.ready.set()
        return
    elector = LeaseElector(
        coordination=client.CoordinationV1Api(),
        namespace=OPTIONS.lease_namespace,
        name=OPTIONS.lease_name,
        identity=OPTIONS.identity,
        timing=OPTIONS.timing,
        on_started=_start_leading,
        on_stopped=_stop_leading,
    )
    RUNTIME.elector_task = asyncio.create_task(elector.run(), name="leader election")
    await elector.settled.wait()
    RUNTIME.ready.set()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig ``connbalance run`` was given
    (exported as KUBECONFIG), read when kopf asks rather than when the client was imported."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    runtime = _runtime()
    await runtime.loops.stop_all()
    if runtime.elector_task is not None:
        runtime.elector_task.cancel()
        await asyncio.gather(runtime.elector_task, return_exceptions=True)
    if runtime.server is not None:
        await runtime.server.cleanup()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def balancer_event(
    event: kopf.RawEvent, name: str, namespace: str | None, meta: kopf.Meta, spec: kopf.Spec,
    **_: Any,
) -> None:
    runtime, key = _runtime(), (namespace or "", name)
    _remember_handler_context(runtime)
    balancers = runtime.apis.balancers
    if event.get("type") == "DELETED":
        if balancers is not None:
            balancers.drop(key)
        runtime.index.drop(key)
        runtime.seen.pop(key, None)
        await runtime.loops.stop(key)
        metrics.forget("/".join(key))
        return
    if balancers is not None and isinstance(event.get("object"), Mapping):
        balancers.seen(key, event["object"])
    runtime.index.put(key, Watched.from_spec(key[0], dict(spec)))
    if LEGACY_FINALIZER in (meta.get("finalizers") or []):
        await asyncio.to_thread(_drop_legacy_finalizer, runtime.apis.custom, key, meta)
    version = (meta.get("generation"), (meta.get("annotations") or {}).get(PAUSE_ANNOTATION))
    if runtime.seen.get(key) == version and runtime.loops.running(key):
        return  # our own status write, or nothing a reconcile would judge differently
    runtime.seen[key] = version
    if runtime.leading:
        runtime.loops.ensure(key)


@kopf.on.event("", "v1", "pods")
async def pod_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, labels: kopf.Labels,
    uid: str, **_: Any,
) -> None:
    runtime, namespace = _runtime(), namespace or ""
    keys = runtime.index.for_pod(namespace, dict(labels))
    if not keys and not runtime.index.knows_pod(uid):
        return
    # Any event of a selected pod, or of one that just left the selection: its annotations,
    # conditions or labels may have moved, so the next reader lists the pool again.
    _bump(runtime, namespace)
    gone = event.get("type") == "DELETED" or not keys
    summary = None if gone else PodSummary.from_body(dict(body))
    if runtime.index.pod_changed(uid, summary):
        for key in keys:
            runtime.loops.wake(key)


async def _workload_event(kind: str, body: kopf.Body, namespace: str | None, name: str) -> None:
    namespace = namespace or ""
    runtime = _runtime()
    keys = runtime.index.for_workload(namespace, kind, name)
    if keys:
        _bump(runtime, namespace)
    if keys and runtime.index.rollout_finished(
        namespace, kind, name, rollout_complete(kind, dict(body))
    ):
        log.info("%s %s/%s finished rolling out", kind, namespace, name)
        for key in keys:
            runtime.loops.wake(key)


def _bump(runtime: Runtime, namespace: str) -> None:
    if runtime.apis.changes is not None:
        runtime.apis.changes.bump(namespace)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    await _workload_event("Deployment", body, namespace, name)


@kopf.on.event("apps", "v1", "statefulsets")
async def statefulset_event(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    await _workload_event("StatefulSet", body, namespace, name)


def _drop_legacy_finalizer(custom: Any, key: Key, meta: Mapping[str, Any]) -> None:
    """Objects written by versions that ran a timer carry its finalizer; nothing needs it now,
    and left in place it would hold a deletion while the operator is away."""
    kept = [f for f in meta.get("finalizers") or [] if f != LEGACY_FINALIZER]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, key[0], PLURAL, key[1], {"metadata": {"finalizers": kept or None}}
    )

