"""What the node agent reads from the API: the pods bound to its node, and ConnectionBalancers.

Read-only: list and watch pods with the field selector ``spec.nodeName=<node>`` (the API server
filters, so a node agent only ever receives its own node's pods), and ``get`` the one
ConnectionBalancer a request names. The official client is synchronous, so the watch runs in a
thread: list, hand the whole list to the loop (so pods deleted while it was away are forgotten),
then watch from that list's resourceVersion until the watch ends, and list again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from connbalance.agent.intake import WATCH_RETRY_SECONDS, WATCH_TIMEOUT_SECONDS
from connbalance.agent.node import NodeAgent, NodePod, PolicyUnreadable
from connbalance.model import DRAIN_ANNOTATION

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "connbalance.io", "v1alpha1", "connectionbalancers"
_NOT_FOUND = 404
# An event from the watch thread: ("sync", [pods]), ("update", pod) or ("gone", uid).
Event = tuple[str, Any]


def node_pod(obj: Any) -> NodePod:
    """A ``V1Pod`` of the official client, as the node agent keeps it."""
    meta, spec, status = obj.metadata, obj.spec, obj.status
    annotations = meta.annotations or {}
    return NodePod(
        uid=meta.uid,
        namespace=meta.namespace,
        name=meta.name,
        ip=(status.pod_ip if status is not None else None) or None,
        labels=tuple(sorted((meta.labels or {}).items())),
        host_network=bool(spec is not None and spec.host_network),
        drain=annotations.get(DRAIN_ANNOTATION),
    )


class KubePolicies:
    """``get`` of one ConnectionBalancer (``connbalance.io/v1alpha1``)."""

    def __init__(self, *, api_client: Any) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)

    def read(self, *, namespace: str, name: str) -> Mapping[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found: Any = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == _NOT_FOUND:
                return None
            raise PolicyUnreadable(
                f"cannot read ConnectionBalancer {namespace}/{name}: HTTP {exc.status}"
            ) from None
        except OSError as exc:
            raise PolicyUnreadable(
                f"cannot read ConnectionBalancer {namespace}/{name}: {exc}"
            ) from None
        return dict(found.get("spec") or {})


class NodePodWatch:
    """A thread that lists and watches the pods of ``node``, putting events on ``events``."""

    def __init__(self, *, node: str, api_client: Any, loop: asyncio.AbstractEventLoop) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._selector = f"spec.nodeName={node}"
        self._loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._halt = threading.Event()
        self._current: list[Any] = []
        self._thread = threading.Thread(target=self._follow, name="node-pod-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        self._halt.set()
        for watcher in self._current:
            watcher.stop()

    def _put(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _follow(self) -> None:
        while not self._halt.is_set():
            try:
                self._list_then_watch()
            except Exception as exc:  # the API server may be away for a while; keep trying
                if self._halt.is_set():
                    break
                log.warning("watching the pods of %s: %s; retrying", self._selector, exc)
                self._halt.wait(WATCH_RETRY_SECONDS)

    def _list_then_watch(self) -> None:
        from kubernetes import watch

        listed = self._core.list_pod_for_all_namespaces(field_selector=self._selector)
        self._put(("sync", [node_pod(p) for p in listed.items]))
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        self._current[:] = [watcher]
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            self._core.list_pod_for_all_namespaces,
            field_selector=self._selector,
            resource_version=listed.metadata.resource_version if listed.metadata else None,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _request_timeout=WATCH_TIMEOUT_SECONDS + 10,
        ):
            if self._halt.is_set():
                return
            obj = event["object"]
            if event["type"] == "DELETED":
                self._put(("gone", obj.metadata.uid))
            elif event["type"] in ("ADDED", "MODIFIED"):
                self._put(("update", node_pod(obj)))


async def follow(agent: NodeAgent, events: asyncio.Queue[Event], *, stop: asyncio.Event) -> None:
    """Hand the watch's events to the agent, one at a time, until ``stop``."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getting = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                return
            kind, payload = getting.result()
            try:
                if kind == "sync":
                    await agent.sync(payload)
                elif kind == "update":
                    await agent.update(payload)
                else:
                    await agent.forget(payload)
            except Exception:  # one pod's trouble must not stop the others being served
                log.exception("node agent: handling %s failed", kind)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping


__all__ = ["KubePolicies", "NodePodWatch", "follow", "node_pod"]
