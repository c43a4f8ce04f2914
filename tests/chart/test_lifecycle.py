"""The chart's life on a real control plane: as users install, upgrade and remove it.

- every representative render passes the API server's own validation (server-side dry run);
- the rights under ``watchNamespaces`` are what `kubectl auth can-i` says they are;
- `helm install` runs the operator, which takes up a ConnectionBalancer; `helm upgrade` with a
  changed value rolls it and keeps the CRD and the ConnectionBalancer; after `helm uninstall`
  nothing hangs: the ConnectionBalancer and its namespace can still be deleted;
- the same with `kubectl apply -k manifests/` and `kubectl delete -k manifests/`, which removes
  the CRD too.

The pods are image-less: the test kubelet runs the container's command as a local process.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helmrun import CHART, ROOT, Helm
from tests.cluster.cluster import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

CRD = "customresourcedefinition/connectionbalancers.connbalance.io"
MANIFESTS_NAMESPACE = "connbalance-system"


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(cluster.kubectl), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env=cluster.env,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done


def get(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    done = kubectl(cluster, "get", *args, "-o", "json", "--ignore-not-found", check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def helm_in(helm: Helm, cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return helm.run(*args, "--kubeconfig", str(cluster.kubeconfig), env=cluster.env)


def balancer(namespace: str, name: str = "auth") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "connbalance.io/v1alpha1",
            "kind": "ConnectionBalancer",
            "metadata": {"name": name, "namespace": namespace},
            # Paused: the operator takes it up and writes status, without Prometheus or pods.
            "spec": {"selector": {"matchLabels": {"app": "auth"}}, "paused": True},
        }
    )


def release_stuck(cluster: Cluster) -> None:
    """Teardown only: if ConnectionBalancers hang on a finalizer (the failure these tests look
    for), drop the finalizers, so that the session's other tests keep a working cluster."""
    listed = get(cluster, "connectionbalancers", "--all-namespaces") if get(cluster, CRD) else None
    for item in (listed or {}).get("items", []):
        meta = item["metadata"]
        if meta.get("deletionTimestamp") and meta.get("finalizers"):
            kubectl(
                cluster, "patch", "connectionbalancer", meta["name"], "-n", meta["namespace"],
                "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip


def uid(cluster: Cluster, *args: str) -> str:
    found = get(cluster, *args)
    assert found is not None, f"no {' '.join(args)}"
    return str(found["metadata"]["uid"])


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> Iterator[None]:
    """The CRD, as the chart's crds/ holds it; put back after the module if a test removed it."""

    def apply() -> None:
        kubectl(cluster, "apply", "-f", str(CHART / "crds" / "crd.yaml"))
        kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", CRD)

    def settled() -> bool:
        found = get(cluster, CRD)
        return found is None or not found["metadata"].get("deletionTimestamp")

    apply()
    yield
    release_stuck(cluster)
    eventually(settled, what="the CRD not being deleted", timeout=120)
    apply()


# --- server-side dry run ---------------------------------------------------------------------


def renders(namespace: str) -> dict[str, list[str]]:
    return {
        "default": [],
        "namespaced": [
            f"watchNamespaces={{{namespace}}}",
            "rbac.readSecrets=true",
            "rbac.secretNames={prometheus-token}",
        ],
        "everything": [
            "replicaCount=2",
            "logFormat=json",
            "priorityClassName=system-cluster-critical",
            f"agentAccess[0].namespace={namespace}",
            "agentAccess[0].serviceAccount=auth",
            "dashboard.enabled=true",
            "examples.teleport.enabled=true",
            f"examples.teleport.namespace={namespace}",
            "examples.teleport.method=http",
            "examples.teleport.tokenSecret=agent-token",
            "podLabels.team=net",
            "tolerations[0].key=dedicated",
            "tolerations[0].operator=Exists",
            "resources.limits.cpu=1",
        ],
    }


@pytest.mark.parametrize("render", ["default", "namespaced", "everything"])
def test_each_render_passes_the_api_servers_validation(helm, cluster, namespace, crd, render):
    sets = renders(namespace)[render]
    done = helm.template(*sets, release=f"dry-{namespace}", namespace=namespace)
    assert done.returncode == 0, done.stderr
    applied = kubectl(
        cluster, "apply", "--dry-run=server", "--server-side", "--field-manager=chart-test",
        "--validate=strict", "-f", "-", stdin=done.stdout, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    kinds = {line.split("/")[0] for line in applied.stdout.split()}
    assert "deployment.apps" in " ".join(kinds)


# --- rights ----------------------------------------------------------------------------------


def can_i(cluster: Cluster, account: str, *args: str) -> bool:
    done = kubectl(cluster, "auth", "can-i", f"--as={account}", *args, check=False)
    assert done.stdout.strip() in {"yes", "no"}, done.stderr
    return done.stdout.strip() == "yes"


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", name)
    yield name
    kubectl(cluster, "delete", "namespace", name, "--wait=false", check=False)


def install_rbac(helm: Helm, cluster: Cluster, namespace: str, *sets: str) -> Iterator[str]:
    """The chart's ServiceAccount and rights alone, applied; yields the account's user name."""
    release = f"rbac-{namespace}"
    only = ["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    done = helm.template(*sets, release=release, namespace=namespace, extra=only)
    assert done.returncode == 0, done.stderr
    kubectl(cluster, "apply", "-f", "-", stdin=done.stdout)
    yield f"system:serviceaccount:{namespace}:{release}-connbalance"
    kubectl(cluster, "delete", "-f", "-", "--wait=false", stdin=done.stdout, check=False)


def test_watch_namespaces_grants_rights_in_those_namespaces_only(
    helm, cluster, namespace, other_namespace
):
    sets = [f"watchNamespaces={{{namespace}}}", "rbac.readSecrets=true", "rbac.secretNames={tok}"]
    for account in install_rbac(helm, cluster, namespace, *sets):
        here = ["-n", namespace]
        for verb, what in [
            ("list", "connectionbalancers.connbalance.io"),
            ("watch", "connectionbalancers.connbalance.io"),
            ("patch", "connectionbalancers.connbalance.io/status"),
            ("patch", "pods"),
            ("list", "deployments.apps"),
            ("create", "events"),
            ("get", "secrets/tok"),
        ]:
            assert can_i(cluster, account, verb, what, *here), f"{verb} {what} in {namespace}"
        for verb, what in [("get", "secrets/other"), ("list", "secrets"), ("create", "pods")]:
            assert not can_i(cluster, account, verb, what, *here), f"{verb} {what}"
        for verb, what in [
            ("list", "connectionbalancers.connbalance.io"),
            ("patch", "pods"),
            ("get", "secrets/tok"),
        ]:
            assert not can_i(cluster, account, verb, what, "-n", other_namespace), (
                f"{verb} {what} outside watchNamespaces"
            )
            assert not can_i(cluster, account, verb, what, "--all-namespaces"), f"{verb} {what} -A"
        # What kopf reads cluster-wide, and nothing more.
        assert can_i(cluster, account, "watch", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(cluster, account, "list", "namespaces")
        assert not can_i(cluster, account, "create", "namespaces")


def test_without_watch_namespaces_the_rights_are_cluster_wide_and_secrets_stay_closed(
    helm, cluster, namespace, other_namespace
):
    for account in install_rbac(helm, cluster, namespace):
        assert can_i(cluster, account, "patch", "pods", "-n", other_namespace)
        assert can_i(cluster, account, "list", "connectionbalancers.connbalance.io", "-A")
        assert not can_i(cluster, account, "get", "secrets", "-n", other_namespace)


# --- helm install, upgrade, uninstall --------------------------------------------------------


@pytest.fixture(scope="module")
def release(helm: Helm, cluster: Cluster, crd: None) -> Iterator[tuple[str, str]]:
    """A namespace of the module's own, and the chart installed there, serving it."""
    namespace = f"lc-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", namespace)
    name = f"cb-{namespace}"
    done = helm_in(
        helm, cluster, "install", name, str(CHART), "--namespace", namespace,
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"prometheus.url={cluster.prometheus_url}", "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield namespace, name
    helm_in(helm, cluster, "uninstall", name, "--namespace", namespace)
    kubectl(cluster, "delete", "connectionbalancers", "--all", "-n", namespace, "--wait=false",
            check=False)  # fmt: skip
    release_stuck(cluster)
    kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)


def taken_up(cluster: Cluster, namespace: str, name: str = "auth") -> dict[str, Any]:
    """The ConnectionBalancer once the operator has written its status."""

    def check() -> dict[str, Any] | None:
        found = get(cluster, "connectionbalancer", name, "-n", namespace)
        return found if found and (found.get("status") or {}).get("phase") else None

    found: dict[str, Any] = eventually(
        check, what=f"the operator writing status on {namespace}/{name}", timeout=120
    )
    return found


def operator_pods(cluster: Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    listed = get(
        cluster, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}"
    ) or {"items": []}
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def test_helm_install_runs_the_operator_and_it_takes_up_a_balancer(cluster, release):
    namespace, _ = release
    kubectl(cluster, "apply", "-f", "-", stdin=balancer(namespace))
    found = taken_up(cluster, namespace)
    assert found["status"]["phase"] == "Paused"


def test_helm_upgrade_rolls_the_operator_and_keeps_the_crd_and_the_balancer(helm, cluster, release):
    namespace, name = release
    crd_uid = uid(cluster, CRD)
    kubectl(cluster, "apply", "-f", "-", stdin=balancer(namespace))
    balancer_uid = uid(cluster, "connectionbalancer", "auth", "-n", namespace)
    pods = operator_pods(cluster, namespace, name)
    before = {p["metadata"]["labels"]["pod-template-hash"] for p in pods}
    assert before

    done = helm_in(
        helm, cluster, "upgrade", name, str(CHART), "--namespace", namespace, "--reuse-values",
        "--set", "logFormat=json", "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kubectl(cluster, "rollout", "status", f"deployment/{name}-connbalance", "-n", namespace,
            "--timeout=120s")  # fmt: skip

    def rolled() -> list[dict[str, Any]]:
        pods = operator_pods(cluster, namespace, name)
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in pods}
        return pods if pods and not hashes & before else []

    pods = eventually(rolled, what="the operator's pods replaced by the new template")
    args = pods[0]["spec"]["containers"][0]["args"]
    assert "--log-format=json" in args
    assert uid(cluster, CRD) == crd_uid
    assert uid(cluster, "connectionbalancer", "auth", "-n", namespace) == balancer_uid


def test_after_helm_uninstall_nothing_hangs(helm, cluster, release):
    namespace, name = release
    kubectl(cluster, "apply", "-f", "-", stdin=balancer(namespace))
    done = helm_in(helm, cluster, "uninstall", name, "--namespace", namespace, "--wait")
    assert done.returncode == 0, done.stderr
    for kind in ("deployment", "serviceaccount", "service", "role", "rolebinding"):
        assert get(cluster, kind, f"{name}-connbalance", "-n", namespace) is None, kind
    for kind in ("clusterrole", "clusterrolebinding"):
        assert get(cluster, kind, f"{name}-connbalance") is None, kind
    eventually(lambda: not operator_pods(cluster, namespace, name), what="the operator gone")
    assert get(cluster, CRD) is not None, "Helm keeps the CRD, as the README says"

    kubectl(cluster, "delete", "connectionbalancer", "auth", "-n", namespace, "--wait=false")
    eventually(
        lambda: get(cluster, "connectionbalancer", "auth", "-n", namespace) is None,
        what="the ConnectionBalancer deleted after uninstall (no finalizer left waiting)",
        timeout=30,
    )
    kubectl(cluster, "delete", "namespace", namespace, "--wait=false")
    eventually(
        lambda: get(cluster, "namespace", namespace) is None,
        what=f"namespace {namespace} deleted after uninstall",
        timeout=90,
    )


# --- kubectl apply -k / delete -k ------------------------------------------------------------


@pytest.fixture
def from_manifests(cluster: Cluster, crd: None) -> Iterator[str]:
    """manifests/ applied with -k; a namespace for a ConnectionBalancer. Teardown undoes what a
    failed test left, so that the session's other tests keep a working cluster."""
    assert get(cluster, "namespace", MANIFESTS_NAMESPACE) is None, "manifests/ already applied"
    namespace = f"k-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", namespace)
    kubectl(cluster, "apply", "-k", str(ROOT / "manifests"))
    yield namespace
    release_stuck(cluster)
    kubectl(cluster, "delete", "-k", str(ROOT / "manifests"), "--wait=false", "--ignore-not-found",
            check=False)  # fmt: skip
    kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)


def test_kubectl_apply_k_runs_the_operator_and_delete_k_removes_everything(cluster, from_manifests):
    namespace = from_manifests
    kubectl(cluster, "rollout", "status", "deployment/connbalance", "-n", MANIFESTS_NAMESPACE,
            "--timeout=120s")  # fmt: skip
    kubectl(cluster, "apply", "-f", "-", stdin=balancer(namespace))
    taken_up(cluster, namespace)

    kubectl(cluster, "delete", "-k", str(ROOT / "manifests"), "--wait=false")
    for what, args in [
        ("the ConnectionBalancer", ("connectionbalancer", "auth", "-n", namespace)),
        ("the CRD", (CRD,)),
        (f"namespace {MANIFESTS_NAMESPACE}", ("namespace", MANIFESTS_NAMESPACE)),
        ("the ClusterRole", ("clusterrole", "connbalance")),
    ]:
        eventually(
            lambda args=args: get(cluster, *args) is None,
            what=f"{what} deleted by delete -k",
            timeout=90,
        )
    kubectl(cluster, "delete", "namespace", namespace, "--wait=false")
    eventually(
        lambda: get(cluster, "namespace", namespace) is None,
        what=f"namespace {namespace} deleted",
        timeout=90,
    )
