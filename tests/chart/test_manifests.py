"""manifests/: the same objects as the chart's default render, by `kubectl apply -k` or `-f`.

Compared as parsed objects, so that formatting and order do not matter and a changed field does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmrun import CHART, ROOT
from tests.cluster import build

MANIFESTS = ROOT / "manifests"
NAMESPACE = "connbalance-system"
THE_NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def objects(text: str) -> list[str]:
    """Each object as canonical JSON, sorted: comparable whatever the order and the layout (and
    whether 30.0 is written 30, as kustomize writes it: the same JSON number)."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    return sorted(json.dumps(_numbers(d), sort_keys=True) for d in docs)


def _numbers(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers(v) for v in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)
    return node


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    path = build.bin_dir() / "kubectl"
    if not path.exists():
        pytest.fail(f"no kubectl at {path}: run `make cluster-build` (make test does)")
    return path


@pytest.fixture(scope="module")
def chart_render(helm) -> list[str]:
    done = helm.run(
        "template", "connbalance", str(CHART), "--namespace", NAMESPACE, "--include-crds"
    )
    assert done.returncode == 0, done.stderr
    return sorted([*objects(done.stdout), *objects(json.dumps(THE_NAMESPACE))])


def test_the_crd_copies_are_the_generated_crd():
    from connbalance.kube.crd import render_yaml

    assert (CHART / "crds" / "crd.yaml").read_text() == render_yaml(), "run `make manifests`"
    assert (MANIFESTS / "crd.yaml").read_text() == render_yaml(), "run `make manifests`"


def test_apply_f_of_the_manifests_is_the_charts_default_render(chart_render):
    files = (MANIFESTS / "crd.yaml").read_text() + "\n---\n"
    files += (MANIFESTS / "connbalance.yaml").read_text()
    assert objects(files) == chart_render, "run `make manifests`"


def test_apply_k_of_the_manifests_is_the_charts_default_render(kubectl, chart_render):
    done = subprocess.run(
        [str(kubectl), "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert objects(done.stdout) == chart_render


def test_the_comparison_sees_a_changed_field(chart_render):
    changed = [json.loads(o) for o in chart_render]
    deployment = next(o for o in changed if o["kind"] == "Deployment")
    deployment["spec"]["replicas"] = 2
    assert objects(yaml.safe_dump_all(changed)) != chart_render
    assert {key(o) for o in changed} == {key(json.loads(o)) for o in chart_render}
