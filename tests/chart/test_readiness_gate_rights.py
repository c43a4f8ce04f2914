"""The chart's rights for steering readinessGate on the real API server: the operator's account
may patch ``pods/status`` only with ``rbac.readinessGate: true``, and then only where it serves."""

from __future__ import annotations

import pytest

from tests.chart.test_lifecycle import can_i, install_rbac

pytestmark = pytest.mark.cluster

STATUS = ["patch", "pods", "--subresource=status"]


def test_the_pod_status_patch_is_granted_only_with_rbac_readiness_gate(helm, cluster, namespace):
    for account in install_rbac(helm, cluster, namespace):
        assert not can_i(cluster, account, *STATUS, "-n", namespace)
        assert can_i(cluster, account, "patch", "pods", "-n", namespace)  # the annotation
    for account in install_rbac(helm, cluster, namespace, "rbac.readinessGate=true"):
        assert can_i(cluster, account, *STATUS, "-n", namespace)
        assert not can_i(cluster, account, "update", "pods", "--subresource=status",
                         "-n", namespace)


def test_under_watch_namespaces_the_pod_status_patch_stays_in_them(helm, cluster, namespace):
    sets = [f"watchNamespaces={{{namespace}}}", "rbac.readinessGate=true"]
    for account in install_rbac(helm, cluster, namespace, *sets):
        assert can_i(cluster, account, *STATUS, "-n", namespace)
        assert not can_i(cluster, account, *STATUS, "--all-namespaces")
