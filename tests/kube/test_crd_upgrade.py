"""Upgrading the CRD from the boolean ``steer`` to ``steering`` on the real API server.

``fixtures/crd-steer-boolean.yaml`` is ``manifests/crd.yaml`` as it was before ``steering``
came. Objects are stored under it, the CRD is upgraded to the generated one, and the stored
objects must still read, through the operator's own parse, as they meant. Both CRDs are given a
group of the test's own, so the shared cluster's ConnectionBalancer CRD is never touched.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from connbalance.kube.crd import GROUP, PLURAL, VERSION, build_crd
from connbalance.model import Policy, PolicyError
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

OLD_CRD = Path(__file__).parent / "fixtures" / "crd-steer-boolean.yaml"
SELECTOR = {"matchLabels": {"app": "auth"}}


def regrouped(crd: dict[str, Any], group: str) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd))
    assert crd["spec"]["group"] == GROUP
    crd["spec"]["group"] = group
    crd["metadata"]["name"] = f"{PLURAL}.{group}"
    return crd


class Objects:
    """ConnectionBalancers of the test's group, in one namespace."""

    def __init__(self, custom: Any, group: str, namespace: str) -> None:
        self.custom, self.group, self.namespace = custom, group, namespace

    def create(self, name: str, spec: dict[str, Any], *, dry_run: bool = False) -> Any:
        body = {"apiVersion": f"{self.group}/{VERSION}", "kind": "ConnectionBalancer",
                "metadata": {"name": name}, "spec": {"selector": SELECTOR, **spec}}
        return self.custom.create_namespaced_custom_object(
            self.group, VERSION, self.namespace, PLURAL, body, field_validation="Strict",
            **({"dry_run": "All"} if dry_run else {}))

    def patch(self, name: str, spec: dict[str, Any]) -> Any:
        return self.custom.patch_namespaced_custom_object(
            self.group, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def spec(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(
            self.group, VERSION, self.namespace, PLURAL, name)
        spec: dict[str, Any] = body["spec"]
        return spec


def refusal(call: Any, *, status: int = 422) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == status, caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    return message


@pytest.fixture
def upgrade(cluster: Cluster, namespace: str) -> Iterator[tuple[Objects, Any]]:
    """The old CRD under a group of the test's own, its objects, and a way to upgrade it."""
    group = f"u{uuid.uuid4().hex[:8]}.connbalance.test"
    old = regrouped(yaml.safe_load(OLD_CRD.read_text()), group)
    new = regrouped(build_crd(), group)
    name = old["metadata"]["name"]

    def apply(crd: dict[str, Any]) -> None:
        cluster.run_kubectl("apply", "--server-side", "--field-manager=crd-upgrade-test",
                            "-f", "-", stdin=yaml.safe_dump(crd))
        cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    objects = Objects(client.CustomObjectsApi(api), group, namespace)
    apply(old)
    eventually(lambda: _served(objects), what=f"{name} served")
    try:
        yield objects, lambda: apply(new)
    finally:
        cluster.run_kubectl("delete", "crd", name, "--wait=false", check=False)


def _served(objects: Objects) -> bool:
    try:
        objects.create("probe", {}, dry_run=True)
    except ApiException as exc:
        return exc.status != 404
    return True


def _new_schema_in_force(objects: Objects) -> bool:
    """The API server serves a CRD update a moment after storing it: wait for the new enum."""
    try:
        objects.create("probe", {"actuation": {"steering": "gate"}}, dry_run=True)
    except ApiException as exc:
        return "Unsupported value" in str(exc.body)
    return False


def test_objects_stored_with_the_boolean_read_the_same_after_the_upgrade(
    upgrade: tuple[Objects, Any],
) -> None:
    objects, upgrade_crd = upgrade
    objects.create("unsteered", {"actuation": {"steer": False}})
    objects.create("defaulted", {})
    # The old CRD defaulted steer to true into what it stored.
    assert objects.spec("defaulted")["actuation"]["steer"] is True
    assert "unknown field" in refusal(
        lambda: objects.create("early", {"actuation": {"steering": "none"}}), status=400)

    upgrade_crd()
    eventually(lambda: _new_schema_in_force(objects), what="the upgraded schema served")

    unsteered, defaulted = objects.spec("unsteered"), objects.spec("defaulted")
    # Nothing fills steering in beside the stored steer; the operator's parse reads the old field.
    assert "steering" not in unsteered["actuation"]
    assert Policy.from_spec(unsteered).actuation.steering == "none"
    assert Policy.from_spec(defaulted).actuation.steering == "agent"

    # The steer: true every old object holds agrees with both ways of steering.
    objects.patch("defaulted", {"actuation": {"steering": "readinessGate"}})
    assert Policy.from_spec(objects.spec("defaulted")).actuation.steering == "readinessGate"

    # steer: false beside steering agent disagrees: refused naming both, and nothing changes.
    message = refusal(lambda: objects.patch("unsteered", {"actuation": {"steering": "agent"}}))
    assert "spec.actuation.steering" in message, message
    assert "disagrees with steer" in message, message
    with pytest.raises(PolicyError) as caught:
        Policy.from_spec({**unsteered, "actuation": {"steer": False, "steering": "agent"}})
    assert caught.value.field == "spec.actuation.steering"
    assert objects.spec("unsteered") == unsteered
    # Dropping the old field in the same patch is how an object moves over.
    objects.patch("unsteered", {"actuation": {"steer": None, "steering": "agent"}})
    moved = objects.spec("unsteered")
    assert "steer" not in moved["actuation"]
    assert Policy.from_spec(moved).actuation.steering == "agent"


def test_after_the_upgrade_steering_is_accepted_and_a_bad_value_refused_naming_it(
    upgrade: tuple[Objects, Any],
) -> None:
    objects, upgrade_crd = upgrade
    upgrade_crd()
    eventually(lambda: _new_schema_in_force(objects), what="the upgraded schema served")
    objects.create("gated", {"actuation": {"steering": "readinessGate"}})
    assert Policy.from_spec(objects.spec("gated")).actuation.steering == "readinessGate"
    message = refusal(lambda: objects.create("bad", {"actuation": {"steering": "gate"}}))
    assert "spec.actuation.steering" in message, message
    assert "Unsupported value" in message, message
    for steer, steering in ((True, "none"), (False, "readinessGate")):
        spec = {"actuation": {"steer": steer, "steering": steering}}
        message = refusal(lambda spec=spec: objects.create("both", spec))
        assert "spec.actuation.steering" in message, message
        assert "disagrees with steer" in message, message
