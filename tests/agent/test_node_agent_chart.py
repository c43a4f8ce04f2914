"""The chart's node agent: off by default; on, a DaemonSet with exactly the rights it needs, that
the operator's selectors never take, which the API server admits only where Pod Security allows
privileged pods.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmrun import CHART, Helm
from tests.cluster.cluster import Cluster

ON = "nodeAgent.enabled=true"


@pytest.fixture(scope="module")
def helm() -> Helm:
    path = os.environ.get("CONNBALANCE_HELM", "")
    if not path or not Path(path).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return Helm(path)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def daemonset(helm: Helm, *sets: str, **options: Any) -> dict[str, Any]:
    (found,) = by_kind(helm.render(ON, *sets, **options), "DaemonSet")
    return found


def test_the_node_agent_and_its_admission_policy_are_off_by_default(helm):
    docs = helm.render()
    assert not by_kind(docs, "DaemonSet")
    # The operator's own pod-writes policy (rbac.podWritePolicy) is on by default; only the
    # node agent's drain-annotation policy comes with the node agent.
    policies = [d["metadata"]["name"] for d in by_kind(docs, "ValidatingAdmissionPolicy")]
    assert not [name for name in policies if name.endswith("-drain-annotation")]
    assert [name for name in policies if name.endswith("-pod-writes")]


def test_the_chart_lints_clean_with_the_node_agent_and_a_cri_socket(helm):
    done = helm.run(
        "lint", "--strict", str(CHART), "--set", ON, "--set", "watchNamespaces={a,b}",
        "--set", "nodeAgent.criSocket=/run/containerd/containerd.sock",
        "--set", "nodeAgent.netnsFrom={cgroup,cri}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_daemonset_asks_for_the_node_namespaces_and_three_capabilities_only(helm):
    spec = daemonset(helm)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert (spec["hostPID"], spec["hostNetwork"]) == (True, True)
    context = container["securityContext"]
    assert context["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
    }  # fmt: skip
    assert context["readOnlyRootFilesystem"] is True
    assert "privileged" not in context
    assert container["args"][:5] == [
        "node-agent", "--netns-from=cgroup", "--listen=$(POD_IP):9096",
        "--state-dir=/var/lib/connbalance/node-agent", "--max-fraction=0.5",
    ]  # fmt: skip
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
    (state,) = spec["volumes"]
    assert state["hostPath"] == {"path": "/var/lib/connbalance/node-agent",
                                 "type": "DirectoryOrCreate"}  # fmt: skip
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_its_rights_are_read_only_pods_and_a_get_of_balancers(helm):
    docs = helm.render(ON)
    (role,) = [d for d in by_kind(docs, "ClusterRole")
               if d["metadata"]["name"].endswith("node-agent")]  # fmt: skip
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["connbalance.io"], "resources": ["connectionbalancers"], "verbs": ["get"]},
    ]
    (binding,) = [d for d in by_kind(docs, "ClusterRoleBinding")
                  if d["metadata"]["name"].endswith("node-agent")]  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cb-connbalance-node-agent", "namespace": "ops"}
    ]


def test_the_operators_selectors_never_take_the_node_agents_pods(helm):
    docs = helm.render(ON, "replicaCount=2")
    pod_labels = daemonset(helm)["spec"]["template"]["metadata"]["labels"]
    selectors = [d["spec"]["selector"] for d in by_kind(docs, "Service")]
    selectors += [d["spec"]["selector"]["matchLabels"]
                  for d in docs if d["kind"] in ("Deployment", "PodDisruptionBudget")]  # fmt: skip
    assert selectors
    for selector in selectors:
        assert not selector.items() <= pod_labels.items(), selector


def test_values_reach_the_node_agent(helm):
    found = daemonset(
        helm, "watchNamespaces={teleport,auth}", "nodeAgent.priorityClassName=node-critical",
        "nodeAgent.netnsFrom={cgroup,cri}", "nodeAgent.criSocket=/run/containerd/containerd.sock",
        "nodeAgent.port=9200",
        values="nodeAgent: {maxFraction: 0.25}",  # --set would pass a string
    )  # fmt: skip
    spec = found["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["priorityClassName"] == "node-critical"
    assert container["args"][1:] == [
        "--netns-from=cgroup,cri", "--listen=$(POD_IP):9200",
        "--state-dir=/var/lib/connbalance/node-agent", "--max-fraction=0.25",
        "--namespace=teleport", "--namespace=auth",
        "--runtime-endpoint=unix:///run/containerd/containerd.sock",
    ]  # fmt: skip
    assert {"name": "cri-socket", "mountPath": "/run/containerd/containerd.sock"} in container[
        "volumeMounts"
    ]


@pytest.mark.parametrize(
    "sets",
    [["nodeAgent.netnsFrom={proc}"], ["nodeAgent.maxFraction=0"], ["nodeAgent.stateDir=relative"],
     ["nodeAgent.bogus=1"]],
    ids=["unknown-strategy", "zero-fraction", "relative-dir", "typo"],
)  # fmt: skip
def test_the_schema_refuses_bad_node_agent_values(helm, sets):
    done = helm.template(ON, *sets)
    assert done.returncode != 0
    assert "nodeAgent" in done.stderr


def test_the_notes_say_what_the_daemonset_can_do_on_every_node(helm):
    notes = helm.notes(ON)
    assert "On EVERY node it" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "WARNING" not in notes.split("node agent runs as", 1)[1]
    risky = helm.notes(ON, "nodeAgent.drainAdmissionPolicy=false")
    assert "WARNING: nodeAgent.drainAdmissionPolicy is false" in risky


# --- on the API server -------------------------------------------------------------------------


def dry_run(
    cluster: Cluster, namespace: str, docs: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.kubectl), "apply", "--dry-run=server", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, timeout=60,
        env=cluster.env, check=False,
    )  # fmt: skip


@pytest.mark.cluster
@pytest.mark.parametrize("level", ["privileged", "baseline"])
def test_pod_security_admits_the_node_agent_only_where_privileged_is_allowed(
    helm, cluster, namespace, level
):
    label = f"pod-security.kubernetes.io/enforce={level}"
    cluster.run_kubectl("label", "namespace", namespace, label)
    rendered = daemonset(helm, release=f"cb-{namespace}", namespace=namespace)
    template = rendered["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "node-agent-probe", "labels": template["metadata"]["labels"]},
           "spec": {**template["spec"], "serviceAccountName": "default"}}  # fmt: skip
    done = dry_run(cluster, namespace, [rendered, pod])
    if level == "privileged":
        assert done.returncode == 0, done.stderr
        assert "PodSecurity" not in done.stderr
    else:
        assert done.returncode != 0
        refusal = done.stderr
        for reason in ("host namespaces", "hostPath volumes", "non-default capabilities"):
            assert reason in refusal, refusal
    assert json.dumps(template["spec"]["hostPID"]) == "true"
