"""Fixtures of the fault tests: a namespace and a CRD per module, so one pool serves a module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.scenario_kit import apply_crd
from tests.faults.kit import kubectl


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    apply_crd(cluster)


@pytest.fixture(scope="module")
def module_namespace(cluster: Cluster, crd: None) -> Iterator[str]:
    """A fresh namespace for a whole module, deleted (without waiting) after it."""
    name = f"f-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", name)
    yield name
    kubectl(cluster, "delete", "namespace", name, "--wait=false", check=False)
