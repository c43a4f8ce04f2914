"""The pytest plugin for the test cluster: a session-scoped ``cluster`` fixture.

Register it with ``pytest_plugins = ["tests.cluster.fixtures"]`` in tests/conftest.py and mark the
tests that use it ``@pytest.mark.cluster``. The cluster starts on first use and stops at the end
of the session; each test should work in a namespace of its own (see ``namespace``).

With ``CONNBALANCE_CLUSTER=<run dir>`` (e.g. ``~/.cache/connbalance/cluster-run`` after
``make cluster-up``) the tests use that running cluster instead and leave it running: quicker
when iterating on tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running cluster: ``.kubeconfig``, ``.kubectl``, ``.prometheus_url``, ``.env``,
    ``.run_kubectl(*args)``, ``.run_dir`` (logs/ and pods/<ns>_<pod>_<uid>/<container>.log)."""
    existing = os.environ.get("CONNBALANCE_CLUSTER")
    if existing:
        yield Cluster.load(Path(existing).expanduser().resolve())
        return
    running = Cluster(run_dir=tmp_path_factory.mktemp("cluster"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.run_kubectl("create", "namespace", name)
    yield name
    cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)
