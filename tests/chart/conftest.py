"""Real helm for the chart tests: the binary `make helm` extracts (CONNBALANCE_HELM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chart.helmrun import Helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    path = os.environ.get("CONNBALANCE_HELM", "")
    if not path or not Path(path).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return Helm(path)
