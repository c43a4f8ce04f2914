"""``connbalance plan --prometheus ...``: the real command against a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connbalance.cli.main import main
from tests.prometheus.conftest import Pool
from tests.prometheus.harness import PrometheusServer

pytestmark = pytest.mark.prometheus

CONNBALANCE = Path(sys.executable).parent / "connbalance"
SELECTOR = "app.kubernetes.io/component=auth,app.kubernetes.io/instance=teleport"


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONNBALANCE), "plan", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_plan_acts_on_the_two_loaded_auth_pods_and_not_the_restarted_one(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    done = plan("--prometheus", prometheus.url, "--namespace", auth_pool.namespace,
                "--selector", SELECTOR, "--preset", "teleport-auth", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["act"] is True
    assert result["mean"] == pytest.approx(80)
    assert result["skew"] == pytest.approx(1.5)
    drained = {d["pod"]: d["count"] for d in result["drains"]}
    assert set(drained) == {"auth-a", "auth-b"}
    assert all(count > 0 for count in drained.values())


def test_plan_prints_a_table_of_the_live_pool(
    prometheus: PrometheusServer, auth_pool: Pool
) -> None:
    done = plan("--prometheus", prometheus.url, "--namespace", auth_pool.namespace,
                "--selector", SELECTOR)
    assert done.returncode == 0, done.stderr
    for pod in ("auth-a", "auth-b", "auth-c"):
        assert pod in done.stdout


def test_plan_with_prometheus_stopped_exits_3_with_one_line_naming_the_url(
    tmp_path: Path,
) -> None:
    stopped = PrometheusServer(run_dir=tmp_path)
    stopped.start()
    stopped.stop()
    done = plan("--prometheus", stopped.url, "--namespace", "teleport", "--selector", SELECTOR,
                "--preset", "teleport-auth", "--json")
    assert done.returncode == 3
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert stopped.url in lines[0]
    assert "PrometheusUnreachable" in lines[0]


def test_plan_exits_3_when_prometheus_has_no_series_for_the_pool(
    prometheus: PrometheusServer,
) -> None:
    done = plan("--prometheus", prometheus.url, "--namespace", "nobody", "--selector", SELECTOR)
    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1
    assert "EmptyResult" in done.stderr
    assert "--kubeconfig" in done.stderr
    assert prometheus.url in done.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--selector", "app"], "--selector"),
        (["--selector", SELECTOR, "--preset", "open-fds", "--query", "up"], "--query"),
        (["--selector", SELECTOR, "--preset", "custom"], "--query"),
        (["--selector", SELECTOR, "--header", "X-Scope-OrgID"], "--header"),
        (["--selector", SELECTOR, "--header", "Bad Name=x"], "--header"),
        (["--selector", SELECTOR, "--timeout", "0"], "--timeout"),
        (["--selector", SELECTOR, "--max-staleness", "-1"], "--max-staleness"),
        (["--selector", SELECTOR, "--pod-label", "pod-name"], "--pod-label"),
        (["--selector", "9lives=x"], "--selector"),
        (["--selector", SELECTOR, "--bearer-token-file", "/nonexistent/token"],
         "--bearer-token-file"),
        (["--selector", SELECTOR, "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (["--selector", SELECTOR, "--ca-file", __file__, "--insecure-skip-verify"],
         "--insecure-skip-verify"),
    ],
    ids=["selector-form", "query-with-preset", "custom-without-query", "header-form",
         "header-name", "timeout", "staleness", "pod-label", "selector-key", "token-file",
         "ca-file", "ca-and-insecure"],
)
def test_a_bad_flag_exits_2_naming_it(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the same main() the script runs): nothing is queried, so it only costs time
    # to start a process per case.
    code = main(["plan", "--prometheus", "http://127.0.5.1:9", "--namespace", "teleport", *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert named in err


def test_a_url_that_is_not_http_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--prometheus", "prometheus:9090", "--namespace", "teleport",
                 "--selector", SELECTOR])
    assert code == 2
    assert "--prometheus" in capsys.readouterr().err


def test_a_missing_kubeconfig_exits_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["plan", "--prometheus", "http://127.0.5.1:9", "--namespace", "teleport",
                 "--selector", SELECTOR, "--kubeconfig", str(tmp_path / "none")])
    assert code == 2
    assert "--kubeconfig" in capsys.readouterr().err


def test_the_namespace_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--prometheus", "http://127.0.5.1:9", "--selector", SELECTOR]) == 2
    assert "--namespace" in capsys.readouterr().err
