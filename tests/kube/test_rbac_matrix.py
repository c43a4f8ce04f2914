"""The RBAC matrix: for each chart setting that changes RBAC, what the operator's, the node
agent's and a sidecar agent's ServiceAccounts may do, asked of the real API server with
``kubectl auth can-i --as``. Everything not needed is denied; the matrix is written to
docs/reliability.md (``CONNBALANCE_WRITE_DOCS=1``), and the test fails when the doc differs.

The expectations below are the intent, written per question, not read from the chart: list
Secrets never; get a Secret only with ``rbac.readSecrets``, only the named ones with
``secretNames``, never outside the watched namespaces with ``watchNamespaces``; pods patched but
never created, deleted, exec'd or evicted; workloads read, never written; ``pods/status`` only
with ``rbac.readinessGate``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.chart.helmrun import Helm
from tests.cluster.cluster import Cluster
from tests.e2e.scenario_kit import apply_crd
from tests.kube import rbacdoc

pytestmark = pytest.mark.cluster

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
SECRET = "prom-token"


@dataclass(frozen=True)
class Setting:
    column: str
    values: tuple[str, ...]
    watch: bool = False
    secrets: bool = False
    names: bool = False
    gate: bool = False
    node: bool = False


SETTINGS = (
    Setting("default", ()),
    Setting("watchNamespaces", ("watchNamespaces={W}",), watch=True),
    Setting("readSecrets", ("rbac.readSecrets=true",), secrets=True),
    Setting("secretNames", ("rbac.readSecrets=true", f"rbac.secretNames={{{SECRET}}}"),
            secrets=True, names=True),
    Setting("secretNames + watchNamespaces",
            ("rbac.readSecrets=true", f"rbac.secretNames={{{SECRET}}}", "watchNamespaces={W}"),
            secrets=True, names=True, watch=True),
    Setting("readinessGate", ("rbac.readinessGate=true",), gate=True),
    Setting("nodeAgent", ("nodeAgent.enabled=true",), node=True),
)  # fmt: skip

Expect = Callable[[Setting], bool]
always: Expect = lambda s: True  # noqa: E731
never: Expect = lambda s: False  # noqa: E731


@dataclass(frozen=True)
class Question:
    account: str  # operator, node agent, sidecar agent
    verb: str
    resource: str
    where: str  # W, O, R or "all" (cluster-wide)
    expect: Expect

    @property
    def text(self) -> str:
        place = "cluster-wide" if self.where == "all" else f"in {self.where}"
        return f"{self.verb} {self.resource} {place}"


OPERATOR, NODE, SIDECAR = "operator", "node agent", "sidecar agent (agentAccess)"
QUESTIONS = (
    # What it needs, where it serves.
    Question(OPERATOR, "watch", "pods", "W", always),
    Question(OPERATOR, "patch", "pods", "W", always),
    Question(OPERATOR, "watch", "deployments.apps", "W", always),
    Question(OPERATOR, "patch", "connectionbalancers.connbalance.io", "W", always),
    Question(OPERATOR, "patch", "connectionbalancers.connbalance.io/status", "W", always),
    Question(OPERATOR, "create", "events", "W", always),
    Question(OPERATOR, "update", "leases.coordination.k8s.io", "R", always),
    Question(OPERATOR, "create", "events", "R", always),  # LeaderElected, on the Lease
    Question(OPERATOR, "list", "namespaces", "all", always),
    Question(OPERATOR, "list", "customresourcedefinitions.apiextensions.k8s.io", "all", always),
    # What it must never do.
    Question(OPERATOR, "create", "pods", "W", never),
    Question(OPERATOR, "delete", "pods", "W", never),
    Question(OPERATOR, "create", "pods/exec", "W", never),
    Question(OPERATOR, "create", "pods/eviction", "W", never),
    Question(OPERATOR, "patch", "deployments.apps", "W", never),
    Question(OPERATOR, "delete", "statefulsets.apps", "W", never),
    Question(OPERATOR, "list", "secrets", "W", never),
    Question(OPERATOR, "watch", "secrets", "W", never),
    Question(OPERATOR, "list", "secrets", "all", never),
    Question(OPERATOR, "delete", "leases.coordination.k8s.io", "R", never),
    Question(OPERATOR, "create", "customresourcedefinitions.apiextensions.k8s.io", "all", never),
    Question(OPERATOR, "create", "clusterrolebindings.rbac.authorization.k8s.io", "all", never),
    Question(OPERATOR, "*", "*", "all", never),
    # Depending on the setting.
    Question(OPERATOR, "patch", "pods/status", "W", lambda s: s.gate),
    Question(OPERATOR, "get", f"secrets/{SECRET}", "W", lambda s: s.secrets),
    Question(OPERATOR, "get", "secrets/another", "W", lambda s: s.secrets and not s.names),
    Question(OPERATOR, "get", f"secrets/{SECRET}", "O", lambda s: s.secrets and not s.watch),
    Question(OPERATOR, "get", f"secrets/{SECRET}", "all", lambda s: s.secrets and not s.watch),
    Question(OPERATOR, "patch", "pods", "O", lambda s: not s.watch),
    Question(OPERATOR, "list", "pods", "all", lambda s: not s.watch),
    # The node agent: reads pods on every node and the balancers that name it; writes nothing.
    Question(NODE, "watch", "pods", "all", lambda s: s.node),
    Question(NODE, "get", "connectionbalancers.connbalance.io", "W", lambda s: s.node),
    Question(NODE, "patch", "pods", "W", never),
    Question(NODE, "list", "connectionbalancers.connbalance.io", "W", never),
    Question(NODE, "get", f"secrets/{SECRET}", "W", never),
    Question(NODE, "create", "events", "W", never),
    # A sidecar agent watching its own pod's annotation.
    Question(SIDECAR, "watch", "pods", "W", always),
    Question(SIDECAR, "patch", "pods", "W", never),
    Question(SIDECAR, "get", f"secrets/{SECRET}", "W", never),
    Question(SIDECAR, "list", "pods", "O", never),
)


def helm() -> Helm:
    binary = os.environ.get("CONNBALANCE_HELM", "")
    if not binary or not Path(binary).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return Helm(binary)


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster.kubectl), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=cluster.env, check=False)  # fmt: skip


@pytest.fixture
def places(cluster: Cluster, namespace: str) -> Iterator[dict[str, str]]:
    """R, the release's namespace (the fixture's), and W and O, made here. The CRD is applied
    first: RBAC on connectionbalancers is judged only once the API server serves the resource
    (run alone, before any other test applied it, every such question was denied)."""
    apply_crd(cluster)
    extra = {key: f"{namespace}-{key.lower()}" for key in ("W", "O")}
    for name in extra.values():
        assert kubectl(cluster, "create", "namespace", name).returncode == 0
    yield {"R": namespace, **extra}
    for name in extra.values():
        kubectl(cluster, "delete", "namespace", name, "--wait=false")


def install_rbac(cluster: Cluster, setting: Setting, places: dict[str, str],
                 release: str) -> tuple[dict[str, str], list[dict]]:  # fmt: skip
    """The chart's ServiceAccounts and RBAC for ``setting``; the username of each account."""
    values = [v.replace("{W}", "{" + places["W"] + "}") for v in setting.values]
    values += [f"agentAccess[0].namespace={places['W']}", "agentAccess[0].serviceAccount=sidecar"]
    rendered = helm().render(*values, release=release, namespace=places["R"])
    objects = [d for d in rendered if d["kind"] in RBAC_KINDS]
    done = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    assert done.returncode == 0, done.stderr
    accounts = {d["metadata"]["name"] for d in objects if d["kind"] == "ServiceAccount"}
    operator = f"{release}-connbalance"
    assert operator in accounts
    users = {
        OPERATOR: f"system:serviceaccount:{places['R']}:{operator}",
        NODE: f"system:serviceaccount:{places['R']}:{operator}-node-agent",
        SIDECAR: f"system:serviceaccount:{places['W']}:sidecar",
    }
    return users, objects


SUBRESOURCES = ("status", "exec", "eviction")


def can(cluster: Cluster, user: str, question: Question, places: dict[str, str]) -> bool:
    where = ["--all-namespaces"] if question.where == "all" else ["-n", places[question.where]]
    # kubectl reads TYPE/NAME: a subresource goes in its own flag, a name after the slash.
    resource, _, after = question.resource.partition("/")
    target = [resource, f"--subresource={after}"] if after in SUBRESOURCES else [question.resource]
    done = kubectl(cluster, "auth", "can-i", question.verb, *target, *where,
                   f"--as={user}")  # fmt: skip
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), (question, done.stdout, done.stderr)
    return answer == "yes"


def test_each_account_may_do_what_it_needs_and_nothing_else_under_every_setting(
    cluster, places
):
    answers: dict[tuple[str, str, str], bool] = {}
    wrong: list[str] = []
    for setting in SETTINGS:
        release = f"rm{uuid.uuid4().hex[:6]}"
        users, objects = install_rbac(cluster, setting, places, release)
        try:
            with ThreadPoolExecutor(4) as pool:
                asked = [users[q.account] for q in QUESTIONS]
                found = list(pool.map(
                    lambda user, q: can(cluster, user, q, places), asked, QUESTIONS
                ))  # fmt: skip
        finally:
            for d in objects:
                if "namespace" not in d["metadata"]:
                    kubectl(cluster, "delete", d["kind"].lower(), d["metadata"]["name"],
                            "--wait=false")  # fmt: skip
                else:
                    kubectl(cluster, "delete", d["kind"].lower(), d["metadata"]["name"],
                            "-n", d["metadata"]["namespace"], "--wait=false")  # fmt: skip
        for question, allowed in zip(QUESTIONS, found, strict=True):
            answers[(question.account, question.text, setting.column)] = allowed
            if allowed != question.expect(setting):
                verdict = "allowed" if allowed else "denied"
                wrong.append(f"{setting.column}: {question.account} {question.text} {verdict}")
    assert wrong == [], "\n".join(wrong)

    block = rbacdoc.markdown(
        settings=[(s.column, " ".join(f"`{v}`" for v in s.values)) for s in SETTINGS],
        rows=[(q.account, q.text) for q in QUESTIONS],
        answers=answers,
    )
    text = rbacdoc.DOC.read_text()
    if os.environ.get("CONNBALANCE_WRITE_DOCS"):
        rbacdoc.DOC.write_text(rbacdoc.replaced(text, block))
        return
    assert rbacdoc.section(text) == block, (
        "docs/reliability.md's RBAC matrix differs from what the API server answers: "
        "run this test with CONNBALANCE_WRITE_DOCS=1"
    )
