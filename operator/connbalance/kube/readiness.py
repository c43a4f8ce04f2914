"""Readiness of a pool read once from a kubeconfig: for ``connbalance plan --kubeconfig``.

The operator keeps a long-lived client (``KubeFleet``); the CLI needs one list call with the
user's kubeconfig, and the same reading of each pod (``pods.pod_state``): Ready, and since when
(the Ready condition's ``lastTransitionTime``), so that settle time is judged as the operator
would judge it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from connbalance.kube.pods import label_selector, pod_state
from connbalance.model import PodState
from connbalance.ports import FleetError


def read_pods(
    *,
    kubeconfig: str,
    namespace: str,
    selector: Sequence[tuple[str, str]],
    context: str | None = None,
    timeout_seconds: float = 10.0,
) -> tuple[PodState, ...]:
    """The pods that ``selector`` picks in ``namespace``, sorted by name. Raises FleetError naming
    the kubeconfig (or the API server) when they cannot be listed."""
    try:
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise FleetError(f"cannot use kubeconfig {kubeconfig}: {_first_line(exc)}") from exc
    with api:
        server = str(api.configuration.host)
        try:
            listed: Any = client.CoreV1Api(api).list_namespaced_pod(
                namespace,
                label_selector=label_selector(selector),
                _request_timeout=timeout_seconds,
            )
        except ApiException as exc:
            raise FleetError(
                f"API server {server}: cannot list pods {label_selector(selector)!r} in "
                f"{namespace}: HTTP {exc.status} {exc.reason}"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise FleetError(f"API server {server} is unreachable: {_first_line(exc)}") from exc
    return tuple(sorted((pod_state(p) for p in listed.items), key=lambda p: p.name))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
