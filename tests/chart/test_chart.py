"""The Helm chart with real helm: lint, what each value renders, and what NOTES.txt warns about."""

from __future__ import annotations

import pytest

from tests.chart.helmrun import CHART, by_kind, one, operator_args

EVERYTHING_ON = [
    "replicaCount=2",
    "priorityClassName=system-cluster-critical",
    "watchNamespaces={a,b}",
    "logFormat=json",
    "rbac.readSecrets=true",
    "rbac.secretNames={prometheus-token}",
    "rbac.readinessGate=true",
    "agentAccess[0].namespace=teleport",
    "agentAccess[0].serviceAccount=auth",
    "serviceMonitor.enabled=true",
    "podMonitor.enabled=true",
    "dashboard.enabled=true",
    "examples.teleport.enabled=true",
]


def not_leases(docs):
    """The rights that serve ConnectionBalancers: all but the leader election's Lease Role."""
    return [d for d in docs if not d["metadata"]["name"].endswith("-leader-election")]


def test_the_chart_lints_clean(helm):
    done = helm.run("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_lints_clean_with_every_feature_on(helm):
    args = ["lint", "--strict", str(CHART)]
    for item in EVERYTHING_ON:
        args += ["--set", item]
    done = helm.run(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_render_runs_the_operator_hardened(helm):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in helm.render()}
    assert ("ServiceAccount", "cb-connbalance") in docs
    deployment = docs[("Deployment", "cb-connbalance")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["connbalance"]
    assert container["args"][0] == "run"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "priorityClassName" not in pod
    rules = docs[("ClusterRole", "cb-connbalance")]["rules"]
    assert not any("secrets" in r["resources"] for r in rules), "secrets only when asked"
    assert not [d for d in docs if d[0] in {"PodDisruptionBudget", "ConnectionBalancer"}]


def test_log_format_and_the_default_prometheus_url_reach_the_operator(helm):
    args = operator_args(helm.render("logFormat=json", "prometheus.url=http://prom.mon:9090"))
    assert "--log-format=json" in args
    assert "--default-prometheus-url=http://prom.mon:9090" in args
    default = operator_args(helm.render())
    assert "--log-format=text" in default
    assert "--default-prometheus-url=http://prometheus-server.monitoring.svc:80" in default


def test_an_empty_prometheus_url_leaves_the_operator_its_own(helm):
    args = operator_args(helm.render("prometheus.url="))
    assert not [a for a in args if a.startswith("--default-prometheus-url")]


def test_priority_class_and_pod_labels_reach_the_pod(helm):
    docs = helm.render("priorityClassName=high", "podLabels.team=net")
    template = one(docs, "Deployment")["spec"]["template"]
    assert template["spec"]["priorityClassName"] == "high"
    assert template["metadata"]["labels"]["team"] == "net"


def test_secrets_and_agent_access_are_granted_only_when_asked(helm):
    docs = helm.render(
        "rbac.readSecrets=true",
        "agentAccess[0].namespace=teleport",
        "agentAccess[0].serviceAccount=auth",
        "agentAccess[1].namespace=teleport",
        "agentAccess[1].serviceAccount=proxy",
    )
    role = one(docs, "ClusterRole")
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    agent = one(not_leases(docs), "Role")
    assert agent["metadata"]["namespace"] == "teleport"
    assert agent["rules"][0]["verbs"] == ["get", "list", "watch"]
    bound = sorted(b["subjects"][0]["name"] for b in by_kind(not_leases(docs), "RoleBinding"))
    assert bound == ["auth", "proxy"]


def status_writes(role):
    return [r for r in role["rules"] if "pods/status" in r["resources"]]


def test_the_pod_status_patch_for_readiness_gates_is_granted_only_when_asked(helm):
    assert status_writes(one(helm.render(), "ClusterRole")) == []
    granted = [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]
    assert status_writes(one(helm.render("rbac.readinessGate=true"), "ClusterRole")) == granted
    docs = helm.render("rbac.readinessGate=true", "watchNamespaces={a,b}")
    assert status_writes(one(docs, "ClusterRole")) == []
    roles = by_kind(not_leases(docs), "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"a", "b"}
    assert all(status_writes(role) == granted for role in roles)
    unasked = by_kind(not_leases(helm.render("watchNamespaces={a,b}")), "Role")
    assert unasked
    assert all(status_writes(role) == [] for role in unasked)


def test_secret_names_narrow_the_read_to_those_secrets(helm):
    docs = helm.render("rbac.readSecrets=true", "rbac.secretNames={prom-token,agent-token}")
    rules = one(docs, "ClusterRole")["rules"]
    secrets = next(r for r in rules if "secrets" in r["resources"])
    assert secrets["resourceNames"] == ["prom-token", "agent-token"]


def test_watch_namespaces_become_flags_and_roles_in_those_namespaces_only(helm):
    docs = helm.render("watchNamespaces={a,b}", "rbac.readSecrets=true")
    args = operator_args(docs)
    assert "--namespace=a" in args
    assert "--namespace=b" in args
    cluster_rules = one(docs, "ClusterRole")["rules"]
    cluster_wide = {
        (g, r) for rule in cluster_rules for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert cluster_wide == {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_rules)
    roles = {d["metadata"]["namespace"]: d for d in by_kind(not_leases(docs), "Role")}
    assert set(roles) == {"a", "b"}
    for role in roles.values():
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"connectionbalancers", "connectionbalancers/status", "pods", "secrets"} <= resources
    bindings = by_kind(not_leases(docs), "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"a", "b"}
    assert all(b["subjects"][0]["namespace"] == "ops" for b in bindings)


def test_the_leader_elections_lease_and_its_event_are_the_only_rights_in_the_release_namespace(
    helm,
):
    docs = helm.render("watchNamespaces={a}")
    leases = [d for d in by_kind(docs, "Role") if d["metadata"]["namespace"] == "ops"]
    rules = [(r["resources"], r["verbs"]) for r in one(leases, "Role")["rules"]]
    # The Lease, and the LeaderElected Event the new leader posts on it.
    assert rules == [(["leases"], ["get", "create", "update"]), (["events"], ["create"])]
    env = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in env


@pytest.mark.parametrize(("replicas", "strategy"), [(1, "Recreate"), (3, "RollingUpdate")])
def test_more_than_one_replica_rolls_one_at_a_time_under_a_disruption_budget(
    helm, replicas, strategy
):
    docs = helm.render(f"replicaCount={replicas}")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"]["strategy"]["type"] == strategy
    budgets = by_kind(docs, "PodDisruptionBudget")
    if replicas == 1:
        assert budgets == []
    else:
        assert budgets[0]["spec"]["maxUnavailable"] == 1
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budgets[0]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_metrics_service_reaches_the_operators_metrics_port(helm):
    docs = helm.render()
    service = one(docs, "Service")
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert f"--metrics=$(POD_IP):{ports['metrics']['containerPort']}" in operator_args(docs)
    assert by_kind(helm.render("metrics.service.enabled=false"), "Service") == []


def test_monitors_are_made_only_where_the_prometheus_operator_api_is_served(helm):
    sets = ["serviceMonitor.enabled=true", "podMonitor.enabled=true"]
    without = helm.render(*sets)
    assert not by_kind(without, "ServiceMonitor") + by_kind(without, "PodMonitor")
    notes = helm.notes(*sets)
    assert "serviceMonitor.enabled is true, but this cluster does not serve" in notes
    assert "podMonitor.enabled is true, but this cluster does not serve" in notes

    served = ["--api-versions", "monitoring.coreos.com/v1"]
    docs = helm.render(*sets, extra=served)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True, "the metrics' namespace wins"
    pod_monitor = one(docs, "PodMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_a_service_monitor_without_the_metrics_service_is_refused(helm):
    done = helm.template(
        "serviceMonitor.enabled=true",
        "metrics.service.enabled=false",
        extra=["--api-versions", "monitoring.coreos.com/v1"],
    )
    assert done.returncode != 0
    assert "metrics.service.enabled" in done.stderr


def test_the_dashboard_is_a_configmap_the_grafana_sidecar_finds(helm):
    import json

    assert by_kind(helm.render(), "ConfigMap") == []
    config_map = one(
        helm.render("dashboard.enabled=true", "dashboard.namespace=grafana"), "ConfigMap"
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "grafana"
    dashboard = json.loads(config_map["data"]["connbalance.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "connbalance.json").read_text())


def test_the_teleport_example_is_off_by_default_and_selects_the_auth_pods(helm):
    assert by_kind(helm.render(), "ConnectionBalancer") == []
    balancer = one(
        helm.render("examples.teleport.enabled=true", "examples.teleport.release=prod"),
        "ConnectionBalancer",
    )
    assert balancer["metadata"] == {
        **balancer["metadata"],
        "name": "prod-auth",
        "namespace": "teleport",
    }
    spec = balancer["spec"]
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": "auth",
        "app.kubernetes.io/instance": "prod",
    }
    assert spec["workloadRef"] == {"kind": "Deployment", "name": "prod-auth"}
    assert spec["metrics"]["preset"] == "teleport-auth"
    assert spec["dryRun"] is True
    assert "prometheus" not in spec["metrics"], "the operator's default URL applies"


def test_the_notes_point_at_a_readme_that_exists_and_say_how_to_remove_the_crd(helm):
    notes = helm.notes()
    assert "helm show readme" in notes
    assert (CHART / "README.md").is_file()
    assert "kubectl delete crd connectionbalancers.connbalance.io" in notes
    assert "WARNING" not in notes


@pytest.mark.parametrize(
    ("sets", "warning"),
    [
        (
            [
                "examples.teleport.enabled=true",
                "examples.teleport.dryRun=false",
                "examples.teleport.steering=none",
            ],
            "dryRun false and steering none",
        ),
        (
            ["examples.teleport.enabled=true", "examples.teleport.method=http"],
            "method is http without examples.teleport.tokenSecret",
        ),
        (["rbac.readSecrets=true"], "rbac.readSecrets is true without rbac.secretNames"),
        (["replicaCount=0"], "no operator runs"),
    ],
)
def test_the_notes_warn_about_risky_combinations(helm, sets, warning):
    assert warning in helm.notes(*sets)


@pytest.mark.parametrize(
    "sets",
    [
        ["examples.teleport.enabled=true", "examples.teleport.dryRun=false"],
        ["examples.teleport.enabled=true", "examples.teleport.steering=none"],
        [
            "examples.teleport.enabled=true",
            "examples.teleport.method=http",
            "examples.teleport.tokenSecret=agent-token",
            "rbac.readSecrets=true",
            "rbac.secretNames={agent-token}",
        ],
    ],
)
def test_the_notes_do_not_warn_about_safe_combinations(helm, sets):
    assert "WARNING" not in helm.notes(*sets)
