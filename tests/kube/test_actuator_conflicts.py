"""A 409 on the pod write (a conflict) is not a delivery failure to report but a reconcile to
retry on fresh state: it leaves the actuator as the API server's own error, so the loop retries
it and status says nothing; so does the 422 of a pod replaced under the same name
(tests/kube/test_actuator_uid.py, on the real API server). Other failures stay ActuationErrors,
told in status and Events. Found by tests/faults/test_api_faults.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from connbalance.kube.actuator import AnnotationActuator
from connbalance.model import DrainRequest, PodName, PodState, RequestId
from connbalance.ports import ActuationError

ISSUED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REQUEST = DrainRequest(id=RequestId("cb.e1.1.auth-0"), count=5, window_seconds=10.0,
                       quiet_millis=200, deadline=ISSUED + timedelta(seconds=60),
                       policy="teleport/auth", issued_at=ISSUED)
POD = PodState(name=PodName("auth-0"), ready=True, ready_since=0.0, uid="uid-old", ip="127.0.0.1")


class Core:
    """patch_namespaced_pod answering with the API server's error of the status given."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.bodies: list[Any] = []

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any) -> None:
        self.bodies.append(body)
        raise ApiException(status=self.status, reason="Conflict")


def deliver(core: Core) -> None:
    asyncio.run(AnnotationActuator(core=core, namespace="teleport").deliver(pod=POD,
                                                                            request=REQUEST))


def test_a_conflict_on_the_pod_write_is_left_for_the_loop_to_retry():
    core = Core(409)
    with pytest.raises(ApiException) as raised:
        deliver(core)
    assert raised.value.status == 409
    assert not isinstance(raised.value, ActuationError)
    assert core.bodies[0]["metadata"]["uid"] == "uid-old", "the uid is the precondition"


@pytest.mark.parametrize("status", [403, 404, 422, 500])
def test_other_refusals_are_delivery_failures_naming_the_status(status):
    with pytest.raises(ActuationError, match=f"cannot annotate pod auth-0: HTTP {status}"):
        deliver(Core(status))
