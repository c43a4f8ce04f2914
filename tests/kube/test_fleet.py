"""``KubeFleet`` on the test cluster: a real StatefulSet, run by the real StatefulSet controller and
the test kubelet; its rollout is settled only when every replica is Ready on the update
revision."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client, config

from connbalance.kube.actuator import AnnotationActuator
from connbalance.kube.fleet import KubeFleet
from connbalance.kube.podchanges import PodChanges
from connbalance.model import DRAIN_ANNOTATION, DrainRequest, RequestId, WorkloadRef
from connbalance.ports import FleetError, FleetView
from tests.cluster.cluster import Cluster
from tests.kube.counting import CountingCore
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

SELECTOR = (("app", "auth"),)
STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: auth, namespace: {ns}}}
spec:
  replicas: 2
  serviceName: auth
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: auth}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{partition: {partition}}}}}
  template:
    metadata: {{labels: {{app: auth}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: server
        image: connbalance/podserver
        command: [python, tests/cluster/podserver.py]
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: 1
"""


@pytest.fixture
def apis(cluster: Cluster) -> tuple[Any, Any]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api), client.AppsV1Api(api)


@pytest.fixture
def fleet(apis: tuple[Any, Any], namespace: str) -> KubeFleet:
    core, apps = apis
    return KubeFleet(
        core=core,
        apps=apps,
        namespace=namespace,
        selector=SELECTOR,
        workload=WorkloadRef(kind="StatefulSet", name="auth"),
    )


def observe(fleet: KubeFleet) -> FleetView:
    return asyncio.run(fleet.observe())


def settled(fleet: KubeFleet) -> FleetView | None:
    view = observe(fleet)
    return view if view.rollout_complete else None


def statefulset(apis: tuple[Any, Any], namespace: str) -> Any:
    return apis[1].read_namespaced_stateful_set("auth", namespace)


def create(cluster: Cluster, namespace: str, *, partition: int = 0) -> None:
    manifest = STATEFULSET.format(ns=namespace, partition=partition)
    cluster.run_kubectl("apply", "-f", "-", stdin=manifest)


def test_a_new_statefulset_settles_once_both_replicas_are_ready(cluster, namespace, fleet):
    create(cluster, namespace)
    assert not observe(fleet).rollout_complete  # no pod can be Ready yet
    view = eventually(lambda: settled(fleet), what="the StatefulSet to settle")
    assert [p.name for p in view.pods] == ["auth-0", "auth-1"]
    assert all(p.ready and p.ip for p in view.pods)


def test_a_partitioned_update_is_not_settled_until_every_pod_is_on_the_new_revision(
    cluster, namespace, apis, fleet
):
    create(cluster, namespace, partition=2)
    before = eventually(lambda: settled(fleet), what="the StatefulSet to settle")
    # A template change with the partition at the replica count: the controller makes a new
    # revision and updates no pod, so every pod stays Ready on the old one.
    patch = {"spec": {"template": {"metadata": {"annotations": {"example.com/v": "2"}}}}}
    apis[1].patch_namespaced_stateful_set("auth", namespace, patch)

    def held() -> Any:
        sts = statefulset(apis, namespace)
        status = sts.status
        caught_up = (status.observed_generation or 0) >= sts.metadata.generation
        return sts if caught_up and status.update_revision != status.current_revision else None

    sts = eventually(held, what="a new update revision that no pod runs")
    assert sts.status.ready_replicas == 2
    view = observe(fleet)
    assert not view.rollout_complete
    assert all(p.ready for p in view.pods)
    assert view.revision == before.revision  # the same pods
    # Release the partition: both pods are replaced, and only then is the rollout settled.
    apis[1].patch_namespaced_stateful_set(
        "auth", namespace, {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}
    )
    after = eventually(lambda: settled(fleet), what="the released rollout to settle")
    assert {p.uid for p in after.pods}.isdisjoint({p.uid for p in before.pods})
    assert after.revision != before.revision
    sts = statefulset(apis, namespace)
    assert sts.status.current_revision == sts.status.update_revision


def test_a_rolling_restart_is_never_settled_with_old_and_new_pods_mixed(cluster, namespace, fleet):
    create(cluster, namespace)
    before = eventually(lambda: settled(fleet), what="the StatefulSet to settle")
    old = {p.uid for p in before.pods}
    cluster.run_kubectl("rollout", "restart", "-n", namespace, "statefulset/auth")
    seen: list[tuple[bool, frozenset[str]]] = []

    def replaced() -> FleetView | None:
        view = observe(fleet)
        uids = frozenset(p.uid for p in view.pods)
        seen.append((view.rollout_complete, uids))
        return view if view.rollout_complete and uids.isdisjoint(old) else None

    eventually(replaced, what="every pod replaced and the rollout settled", every=0.2)
    assert any(not complete for complete, _ in seen), "the rollout was never seen in progress"
    for complete, uids in seen:
        if complete:  # settled only with all old pods or all new ones, never a mix
            assert uids <= old or uids.isdisjoint(old), json.dumps(sorted(uids))


def test_a_missing_statefulset_is_a_fleet_error_naming_it(namespace, fleet):
    with pytest.raises(FleetError) as missing:
        observe(fleet)
    assert str(missing.value) == f"cannot read StatefulSet auth in {namespace}: HTTP 404 Not Found"


def test_with_pod_changes_a_still_pool_is_listed_once_and_the_next_read_after_a_write_is_fresh(
    cluster, namespace, apis, fleet
):
    create(cluster, namespace)
    eventually(lambda: settled(fleet), what="the StatefulSet to settle")
    core, clock = CountingCore(apis[0]), [0.0]
    changes = PodChanges(clock=lambda: clock[0], resync_seconds=60)
    watched = KubeFleet(core=core, apps=apis[1], namespace=namespace, selector=SELECTOR,
                        workload=WorkloadRef(kind="StatefulSet", name="auth"), changes=changes)
    first = observe(watched)
    assert (observe(watched), core.pod_lists) == (first, 1)  # nothing moved: not listed again
    # The operator's own write: the next read lists, and sees the request it just wrote.
    pod = first.pods[0]
    request = DrainRequest(id=RequestId("fresh-1"), count=1, window_seconds=5, quiet_millis=0,
                           deadline=datetime.now(UTC) + timedelta(minutes=5), steer=False)
    asyncio.run(AnnotationActuator(core=core, namespace=namespace, changes=changes)
                .deliver(pod=pod, request=request))
    after_write = observe(watched)
    assert core.pod_lists == 2
    drain = after_write.pods[0].drain
    assert drain is not None
    assert drain.id == "fresh-1"
    # A change no watch reported (nothing bumps here) is read at the resync period at the latest.
    apis[0].patch_namespaced_pod(pod.name, namespace,
                                 {"metadata": {"annotations": {DRAIN_ANNOTATION: None}}})
    assert observe(watched).pods[0].drain is not None
    clock[0] = 60.0
    assert observe(watched).pods[0].drain is None
    assert core.pod_lists == 3
