"""The chart's ValidatingAdmissionPolicy on a real API server: only the operator's ServiceAccount
may set, change or remove ``connbalance.io/drain`` on a pod; every other writer is refused, even
one whose RBAC lets it patch pods, and every other change to a pod goes through.

The policy and binding are the chart's render (``nodeAgent.enabled``, ``watchNamespaces`` set to
the test's namespace, so the binding leaves the shared cluster's other namespaces alone). Writers
are impersonated with ``kubectl --as=system:serviceaccount:NS:NAME``, as the API server sees a
pod's token.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmrun import Helm
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

DRAIN = "connbalance.io/drain"
POD = "auth-0"


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.kubectl), *args], input=stdin, capture_output=True, text=True,
        timeout=60, env=cluster.env, check=False,
    )  # fmt: skip


@pytest.fixture
def policy(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart's policy and binding for an operator released into ``namespace``; the
    operator's ServiceAccount name."""
    binary = os.environ.get("CONNBALANCE_HELM", "")
    if not binary or not Path(binary).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    rendered = Helm(binary).render(
        "nodeAgent.enabled=true", f"watchNamespaces={{{namespace}}}",
        release=f"cb-{namespace}", namespace=namespace,
    )  # fmt: skip
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    objects = [d for d in rendered if d["kind"] in kinds
               and d["metadata"]["name"].endswith("-drain-annotation")]  # fmt: skip
    assert [d["kind"] for d in objects] == list(kinds)
    (account,) = [d for d in rendered if d["kind"] == "ServiceAccount"
                  and not d["metadata"]["name"].endswith("node-agent")]  # fmt: skip
    manifest = yaml.safe_dump_all([*objects, account])
    done = kubectl(cluster, "apply", "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr
    try:
        yield str(account["metadata"]["name"])
    finally:
        for kind, name in ((d["kind"], d["metadata"]["name"]) for d in objects):
            kubectl(cluster, "delete", kind.lower(), name, "--wait=false")


@pytest.fixture
def writers(cluster: Cluster, namespace: str, policy: str) -> dict[str, str]:
    """The operator's account and an intruder's, both allowed by RBAC to create and patch pods."""
    manifest = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: intruder, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-writer, namespace: {namespace}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list, create, patch, update]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pod-writers, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-writer}}
subjects:
- {{kind: ServiceAccount, name: intruder, namespace: {namespace}}}
- {{kind: ServiceAccount, name: {policy}, namespace: {namespace}}}
"""
    assert kubectl(cluster, "apply", "-f", "-", stdin=manifest).returncode == 0
    return {
        "operator": f"system:serviceaccount:{namespace}:{policy}",
        "intruder": f"system:serviceaccount:{namespace}:intruder",
    }


@pytest.fixture
def node(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A Node no kubelet runs, for the pods to be bound to: nothing starts them, and the pod
    garbage collector, which deletes pods bound to a node that does not exist, leaves them."""
    name = f"nowhere-{namespace}"
    body = json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    assert kubectl(cluster, "create", "-f", "-", stdin=body).returncode == 0
    yield name
    kubectl(cluster, "delete", "node", name, "--wait=false")


def pod_manifest(
    namespace: str, name: str, node: str, annotations: dict[str, str] | None = None
) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    spec = {"nodeName": node, "containers": [{"name": "c", "image": "none"}]}
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    return json.dumps(body)


def annotate(
    cluster: Cluster, namespace: str, who: str, *change: str
) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "annotate", "--overwrite", f"--as={who}", "-n", namespace,
                   f"pod/{POD}", *change)  # fmt: skip


def request(request_id: str) -> str:
    return f"{DRAIN}=" + json.dumps({"id": request_id, "count": 5})


def test_only_the_operators_service_account_may_write_the_drain_annotation(
    cluster, namespace, writers, node
):
    made = kubectl(cluster, "create", "-f", "-", stdin=pod_manifest(namespace, POD, node))
    assert made.returncode == 0, made.stderr
    intruder, operator = writers["intruder"], writers["operator"]
    # Each try forges a new id: a patch let through before the policy loaded sets the annotation,
    # and the same patch again would change nothing, which the policy (it judges changes) allows.
    tries = itertools.count(1)
    refused = eventually(
        lambda: (done := annotate(cluster, namespace, intruder,
                                  request(f"forged-{next(tries)}"))).returncode != 0 and done,
        what="the policy in force: the intruder's drain annotation refused",
        timeout=60,
    )  # fmt: skip
    assert "only the connbalance operator" in refused.stderr
    assert f"({operator})" in refused.stderr

    assert annotate(cluster, namespace, operator, request("cb-1")).returncode == 0
    # Any other change to the pod is anyone's (RBAC permitting), the drain annotation untouched.
    assert annotate(cluster, namespace, intruder, "note=hello").returncode == 0
    for change in (request("forged-again"), f"{DRAIN}-"):  # neither change it nor remove it
        done = annotate(cluster, namespace, intruder, change)
        assert done.returncode != 0
        assert "only the connbalance operator" in done.stderr
    # Nor create a pod carrying one.
    forged = pod_manifest(
        namespace, "auth-1", node, {DRAIN: json.dumps({"id": "forged-3", "count": 1})}
    )
    done = kubectl(cluster, "create", f"--as={intruder}", "-f", "-", stdin=forged)
    assert done.returncode != 0
    assert "only the connbalance operator" in done.stderr

    got = kubectl(cluster, "get", "pod", POD, "-n", namespace, "-o", "json")
    annotations = json.loads(got.stdout)["metadata"]["annotations"]
    assert json.loads(annotations[DRAIN])["id"] == "cb-1"
    assert annotations["note"] == "hello"
    assert annotate(cluster, namespace, operator, f"{DRAIN}-").returncode == 0
