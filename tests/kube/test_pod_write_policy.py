"""The chart's pod-writes ValidatingAdmissionPolicy on the real API server: as the operator's
ServiceAccount (impersonated, with the chart's own RBAC), only ``connbalance.io/*`` annotations
and the pod condition ``connbalance.io/accepting`` may change on a pod.

The chart is rendered with ``watchNamespaces`` set to the test's namespace (so its Role, and the
policy's binding, touch nothing else in the shared cluster) and ``rbac.readinessGate`` on, so RBAC
lets the operator patch pods and pods/status: whatever is refused below is refused by the
policy, not by RBAC. The pod is bound to a Node no kubelet runs, so nothing else writes to it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.chart.helmrun import Helm
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

POD = "auth-0"
ACCEPTING = "connbalance.io/accepting"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.kubectl), *args], input=stdin, capture_output=True, text=True,
        timeout=60, env=cluster.env, check=False,
    )  # fmt: skip


def render(namespace: str, *sets: str) -> list[dict]:
    binary = os.environ.get("CONNBALANCE_HELM", "")
    if not binary or not Path(binary).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return Helm(binary).render(f"watchNamespaces={{{namespace}}}", *sets,
                               release=f"cb-{namespace}", namespace=namespace)  # fmt: skip


@pytest.fixture
def operator(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart's ServiceAccount, RBAC and pod-writes policy for an operator released into
    ``namespace``; the username the API server gives its token."""
    rendered = render(namespace, "rbac.readinessGate=true")
    wanted = [d for d in rendered if d["kind"] in RBAC_KINDS + POLICY_KINDS
              and not d["metadata"]["name"].endswith(("node-agent", "-agent"))]  # fmt: skip
    policies = [d for d in wanted if d["kind"] in POLICY_KINDS]
    assert len(policies) == 2
    assert {d["metadata"]["name"] for d in policies} == {f"cb-{namespace}-connbalance-pod-writes"}
    done = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(wanted))
    assert done.returncode == 0, done.stderr
    (account,) = [d["metadata"]["name"] for d in wanted if d["kind"] == "ServiceAccount"]
    try:
        yield f"system:serviceaccount:{namespace}:{account}"
    finally:
        for d in wanted:
            if "namespace" not in d["metadata"]:  # cluster-scoped: the namespace takes the rest
                kubectl(cluster, "delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false")


@pytest.fixture
def pod(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A pod with labels, an annotation of its own and a Ready condition, on a Node no kubelet
    runs (the pod garbage collector leaves pods on a Node that exists)."""
    node = f"nowhere-{namespace}"
    body = json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    assert kubectl(cluster, "create", "-f", "-", stdin=body).returncode == 0
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": namespace, "labels": {"app": "auth"},
                     "annotations": {"owner": "team-a"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "auth:1"}]},
    }  # fmt: skip
    made = kubectl(cluster, "create", "-f", "-", stdin=json.dumps(manifest))
    assert made.returncode == 0, made.stderr
    ready = status_patch(cluster, namespace, None, {"type": "Ready", "status": "False"})
    assert ready.returncode == 0, ready.stderr
    yield POD
    kubectl(cluster, "delete", "node", node, "--wait=false")


def patch(cluster: Cluster, namespace: str, who: str | None, body: dict,
          *extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    identity = [f"--as={who}"] if who else []
    return kubectl(cluster, "patch", "pod", POD, "-n", namespace, *identity, "--type=strategic",
                   "-p", json.dumps(body), *extra)  # fmt: skip


def status_patch(
    cluster: Cluster, namespace: str, who: str | None, *conditions: dict, **fields: object
) -> subprocess.CompletedProcess[str]:
    """A strategic merge patch of pods/status as ``who``, with no read first (kubectl patch
    reads the object first, which the operator's rights do not allow: it patches blind)."""
    status = {"conditions": list(conditions), **fields} if conditions else dict(fields)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    if who:
        api.set_default_header("Impersonate-User", who)
    try:
        client.CoreV1Api(api).patch_namespaced_pod_status(
            POD, namespace, {"status": status},
            _content_type="application/strategic-merge-patch+json",
        )  # fmt: skip
    except ApiException as exc:
        return subprocess.CompletedProcess([], 1, "", f"{exc.status} {exc.body}")
    finally:
        api.close()
    return subprocess.CompletedProcess([], 0, "", "")


def current(cluster: Cluster, namespace: str) -> dict:
    got = kubectl(cluster, "get", "pod", POD, "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def refused(done: subprocess.CompletedProcess[str], says: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "ValidatingAdmissionPolicy" in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


def test_the_operator_may_change_only_its_own_annotations_and_condition(
    cluster, namespace, operator, pod
):
    # In force once the operator's label change is refused (policies take a moment to load).
    # A change let through before that is put back: the policy judges a change, and patching
    # the label to the value it already holds would change nothing, so it would never refuse.
    def label_change_refused() -> subprocess.CompletedProcess[str] | None:
        done = patch(cluster, namespace, operator, {"metadata": {"labels": {"app": "elsewhere"}}})
        if done.returncode == 0:
            back = patch(cluster, namespace, None, {"metadata": {"labels": {"app": "auth"}}})
            assert back.returncode == 0, back.stderr
            return None
        return done

    first = eventually(label_change_refused, timeout=180,
                       what="the pod-writes policy refusing the operator's label change")
    refused(first, "may not change a pod's labels")

    image = patch(cluster, namespace, operator,
                  {"spec": {"containers": [{"name": "c", "image": "evil:1"}]}})  # fmt: skip
    refused(image, "may not change a pod's spec")
    other = patch(cluster, namespace, operator, {"metadata": {"annotations": {"owner": "me"}}})
    refused(other, "may change only connbalance.io/* annotations")
    added = patch(cluster, namespace, operator, {"metadata": {"annotations": {"note": "x"}}})
    refused(added, "may change only connbalance.io/* annotations")
    removed = patch(cluster, namespace, operator, {"metadata": {"annotations": {"owner": None}}})
    refused(removed, "may change only connbalance.io/* annotations")
    ready = status_patch(cluster, namespace, operator, {"type": "Ready", "status": "True"})
    refused(ready, f"may change only the pod condition {ACCEPTING}")
    phase = status_patch(cluster, namespace, operator, phase="Running")
    refused(phase, f"may change only the pod condition {ACCEPTING}")

    drain = json.dumps({"id": "cb-1", "count": 5})
    allowed = patch(cluster, namespace, operator,
                    {"metadata": {"annotations": {"connbalance.io/drain": drain}}})  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    steer = status_patch(cluster, namespace, operator, {"type": ACCEPTING, "status": "False"})
    assert steer.returncode == 0, steer.stderr

    now = current(cluster, namespace)
    assert now["metadata"]["labels"] == {"app": "auth"}
    assert now["metadata"]["annotations"] == {"owner": "team-a", "connbalance.io/drain": drain}
    assert now["spec"]["containers"][0]["image"] == "auth:1"
    conditions = {c["type"]: c["status"] for c in now["status"]["conditions"]}
    assert conditions == {"Ready": "False", ACCEPTING: "False"}

    # Anyone else (RBAC permitting) is not judged by this policy: the administrator relabels.
    assert patch(cluster, namespace, None, {"metadata": {"labels": {"app": "x"}}}).returncode == 0


def test_without_the_readiness_gate_the_operator_may_not_write_pod_status(
    cluster, namespace, pod
):
    """rbac.readinessGate off: the policy refuses pods/status even where RBAC would allow it
    (here a Role granting it, as a cluster with wider rights would)."""
    rendered = render(namespace)
    wanted = [d for d in rendered if d["kind"] in (*POLICY_KINDS, "ServiceAccount")
              and not d["metadata"]["name"].endswith("node-agent")]  # fmt: skip
    (account,) = [d["metadata"]["name"] for d in wanted if d["kind"] == "ServiceAccount"]
    grant = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: status-writer, namespace: {namespace}}}
rules: [{{apiGroups: [""], resources: [pods, pods/status], verbs: [get, patch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: status-writer, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: status-writer}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {namespace}}}]
"""
    done = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(wanted) + "---" + grant)
    assert done.returncode == 0, done.stderr
    who = f"system:serviceaccount:{namespace}:{account}"
    try:
        steer = eventually(
            lambda: (d := status_patch(cluster, namespace, who,
                                       {"type": ACCEPTING, "status": "False"})).returncode != 0
            and d,
            what="the policy refusing pods/status without rbac.readinessGate", timeout=180,
        )  # fmt: skip
        refused(steer, "may only update pods, not UPDATE pods/status")
        drain = {"metadata": {"annotations": {"connbalance.io/drain": '{"id":"a","count":1}'}}}
        assert patch(cluster, namespace, who, drain).returncode == 0
    finally:
        for d in wanted:
            if "namespace" not in d["metadata"]:
                kubectl(cluster, "delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false")
