"""The Kubernetes ``Actuator``: write the request onto the pod, and with method http also POST it
to the agent. The annotation is written first: it is the durable record the controller and the
agent both read, so a lost POST is made good by the agent's annotation watch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from connbalance.kube.agenttls import AgentTls, agent_url, connect_options, tls_failure
from connbalance.kube.podchanges import PodChanges
from connbalance.model import DRAIN_ANNOTATION, DrainRequest, PodState
from connbalance.ports import ActuationError, Actuator


class AnnotationActuator:
    def __init__(self, *, core: Any, namespace: str, changes: PodChanges | None = None) -> None:
        self._core = core
        self._namespace = namespace
        self._changes = changes

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        # The uid makes the patch fail on a replacement pod that took the same name.
        body = {"metadata": {"uid": pod.uid, "annotations": {DRAIN_ANNOTATION: request.to_json()}}}
        try:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod, pod.name, self._namespace, body
            )
        except (ApiException, HTTPError, OSError) as exc:
            if isinstance(exc, ApiException) and (exc.status == 409 or _stale_uid(exc)):
                # A conflict, or that uid on a replacement: the loop retries the reconcile on
                # fresh state, and nothing is wrong enough for status to say so.
                raise
            status = f"HTTP {exc.status}" if isinstance(exc, ApiException) else str(exc)
            raise ActuationError(f"cannot annotate pod {pod.name}: {status}") from exc
        finally:  # written or not, the pod may have moved: the next reader lists again
            if self._changes is not None:
                self._changes.bump(self._namespace)


def _stale_uid(exc: ApiException) -> bool:
    """The API server refused the patch for its uid: the pod was replaced under its name. It
    answers 422 Invalid, the cause on ``metadata.uid`` (the uid is immutable), not 409."""
    if exc.status != 422:
        return False
    try:
        status = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return False
    causes = (status.get("details") or {}).get("causes") or [] if isinstance(status, dict) else []
    return any(isinstance(c, dict) and c.get("field") == "metadata.uid" for c in causes)


class HttpActuator:
    """Annotation first, then ``POST /v1/drain`` to the agent with a bearer token.

    ``annotate`` is the durable delivery (an ``AnnotationActuator`` in the operator); the POST
    only makes the agent act sooner, so it goes to the pod's IP and ``port`` and fails fast.
    With ``tls`` it goes over HTTPS, and the agent's certificate is verified before the token
    is sent."""

    def __init__(
        self,
        *,
        annotate: Actuator,
        port: int,
        token: str,
        timeout: float = 5.0,
        tls: AgentTls | None = None,
    ) -> None:
        self._annotate = annotate
        self._port = port
        self._token = token
        self._timeout = timeout
        self._tls = tls

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        await self._annotate.deliver(pod=pod, request=request)
        if not pod.ip:
            raise ActuationError(f"pod {pod.name} has no IP to reach its agent")
        url = agent_url(pod.ip, self._port, "/v1/drain", tls=self._tls)
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        body = json.dumps(request.to_wire())
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self._timeout)
                ) as session,
                session.post(
                    url, data=body, headers=headers, **connect_options(self._tls)
                ) as response,
            ):
                if response.status >= 300:
                    text = (await response.text())[:200]
                    raise ActuationError(f"agent {url} answered {response.status}: {text}")
        except TimeoutError as exc:
            raise ActuationError(
                f"agent {url} unreachable: no answer within {self._timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            failure = tls_failure(url, exc) or f"agent {url} unreachable: {exc}"
            raise ActuationError(failure) from exc
