"""Where the operator reads confirmations, as the chart sets it up: the node agent's port only
when the node agent is installed, and a scrape of the agents' own metrics beside the example
ConnectionBalancer when the Prometheus Operator's API is there."""

from __future__ import annotations

from typing import Any

from tests.chart.helmrun import Helm, by_kind

EXAMPLE = "examples.teleport.enabled=true"
MONITORING = ("--api-versions", "monitoring.coreos.com/v1")


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_the_operator_is_told_the_node_agents_port_only_when_the_node_agent_is_installed(
    helm: Helm,
):
    without = operator_args(helm.render())
    assert not [a for a in without if a.startswith("--node-agent-port")]
    with_agent = helm.render("nodeAgent.enabled=true", "nodeAgent.port=9200")
    assert "--node-agent-port=9200" in operator_args(with_agent)
    (daemonset,) = by_kind(with_agent, "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert any(a.endswith(":9200") for a in container["args"] if a.startswith("--listen="))


def test_the_example_scrapes_the_agents_own_metrics_port_of_the_pods_it_balances(helm: Helm):
    docs = helm.render(EXAMPLE, "examples.teleport.release=tp",
                       "examples.teleport.namespace=tele", extra=MONITORING)  # fmt: skip
    (balancer,) = by_kind(docs, "ConnectionBalancer")
    (monitor,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["namespace"] == "tele"]
    assert monitor["metadata"]["name"] == "tp-auth-connbalance-agent"
    assert monitor["spec"]["selector"] == balancer["spec"]["selector"]
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [
        ("connbalance", "/metrics")
    ]


def test_without_the_prometheus_operator_the_example_has_no_pod_monitor(helm: Helm):
    docs = helm.render(EXAMPLE)
    assert by_kind(docs, "ConnectionBalancer")
    assert not by_kind(docs, "PodMonitor")
