"""The uid the actuator writes with its drain annotation, against the real API server: a pod
replaced under the same name refuses the patch (422 Invalid, the cause on ``metadata.uid``), and
the actuator leaves that error to the loop, which retries on fresh state, rather than reporting
a failed delivery. Found by tests/faults/test_api_faults.py (the replaced-pod case)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from connbalance.kube.actuator import AnnotationActuator
from connbalance.model import DRAIN_ANNOTATION, DrainRequest, PodName, PodState, RequestId
from connbalance.ports import ActuationError
from tests.cluster.cluster import Cluster

pytestmark = pytest.mark.cluster

ISSUED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REQUEST = DrainRequest(id=RequestId("cb.e1.1.auth-0"), count=5, window_seconds=10.0,
                       quiet_millis=200, deadline=ISSUED + timedelta(seconds=60),
                       policy="teleport/auth", issued_at=ISSUED)  # fmt: skip


@pytest.fixture
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    yield client.CoreV1Api(api)
    api.close()


@pytest.fixture
def pod_uid(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """auth-0 on a Node no kubelet runs, so nothing else writes to it; its uid."""
    node = f"nowhere-{namespace}"
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    made = core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "auth-0"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "auth:1"}]},
    })  # fmt: skip
    yield str(made.metadata.uid)
    core.delete_node(node)


def deliver(core: client.CoreV1Api, namespace: str, uid: str) -> None:
    pod = PodState(name=PodName("auth-0"), ready=True, ready_since=0.0, uid=uid, ip="")
    actuator = AnnotationActuator(core=core, namespace=namespace)
    asyncio.run(actuator.deliver(pod=pod, request=REQUEST))


def test_a_stale_uid_is_refused_by_the_api_server_and_left_for_the_loop_to_retry(
    core, namespace, pod_uid
):
    with pytest.raises(ApiException) as raised:
        deliver(core, namespace, "0b6e2a44-0000-4000-8000-000000000000")
    assert not isinstance(raised.value, ActuationError)
    assert raised.value.status == 422
    causes = json.loads(raised.value.body)["details"]["causes"]
    assert "metadata.uid" in {c.get("field") for c in causes}
    annotations = core.read_namespaced_pod("auth-0", namespace).metadata.annotations or {}
    assert DRAIN_ANNOTATION not in annotations, "nothing written on the pod of another uid"


def test_the_pods_own_uid_writes_the_request(core, namespace, pod_uid):
    deliver(core, namespace, pod_uid)
    annotations = core.read_namespaced_pod("auth-0", namespace).metadata.annotations
    assert json.loads(annotations[DRAIN_ANNOTATION])["id"] == REQUEST.id
