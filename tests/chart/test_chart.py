"""The Helm chart with real helm: lint, render, strict values, generated manifests in sync."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "connbalance"


@pytest.fixture(scope="module")
def helm() -> str:
    path = os.environ.get("CONNBALANCE_HELM", "")
    if not path or not Path(path).exists():
        pytest.fail("CONNBALANCE_HELM does not name a helm binary: run through `make test`")
    return path


def run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *sets: str) -> list[dict]:
    args = ["template", "cb", str(CHART), "--namespace", "ops"]
    for item in sets:
        args += ["--set", item]
    done = run(helm, *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_chart_lints_clean(helm):
    done = run(helm, "lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_render_runs_the_operator_hardened(helm):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(helm)}
    assert ("ServiceAccount", "cb-connbalance") in docs
    deployment = docs[("Deployment", "cb-connbalance")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["connbalance"]
    assert container["args"][0] == "run"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    rules = docs[("ClusterRole", "cb-connbalance")]["rules"]
    assert not any("secrets" in r["resources"] for r in rules), "secrets only when asked"


def test_secrets_and_agent_access_are_granted_only_when_asked(helm):
    docs = render(
        helm,
        "rbac.readSecrets=true",
        "agentAccess[0].namespace=teleport",
        "agentAccess[0].serviceAccount=auth",
    )
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert any("secrets" in r["resources"] for r in role["rules"])
    agent = next(d for d in docs if d["kind"] == "Role")
    assert agent["metadata"]["namespace"] == "teleport"
    assert agent["rules"][0]["verbs"] == ["get", "list", "watch"]


def test_watch_namespaces_become_flags(helm):
    deployment = next(d for d in render(helm, "watchNamespaces={a,b}") if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=a" in args
    assert "--namespace=b" in args


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicas=2", "replicas"),
        ("tickSeconds=0", "tickSeconds"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("rbac.readSecret=true", "readSecret"),
    ],
)
def test_a_bad_value_fails_the_render_naming_it(helm, setting, named):
    done = run(helm, "template", "cb", str(CHART), "--set", setting)
    assert done.returncode != 0
    assert named in done.stderr


def test_every_value_is_commented_and_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


def test_the_generated_manifests_and_crd_copies_are_in_sync(helm):
    from connbalance.kube.crd import render_yaml

    assert (CHART / "crds" / "crd.yaml").read_text() == render_yaml()
    rendered = run(
        helm, "template", "connbalance", str(CHART), "--namespace", "connbalance-system"
    ).stdout
    checked_in = (ROOT / "manifests" / "connbalance.yaml").read_text()
    assert rendered.strip() in checked_in, "run `make manifests`"
