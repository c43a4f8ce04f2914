"""``make bench-agent-scale`` on a tiny case (2,000 sockets, 300 proxied connections): it runs,
and its JSON is well formed. Nothing here is timed: the figures belong to the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connbalance.agent.reset import ResetUnavailable, check_sock_destroy

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.netadmin


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_the_scale_benchmark_prints_one_well_formed_json_document():
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.agent.bench_scale", "--sockets", "2000",
         "--proxy-connections", "300", "--idle-seconds", "1", "--repeats", "2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert len(report["machine"]["load_average_at_start"]) == 3
    assert report["setup"]["sockets"] == 2000
    assert len(report["setup"]["source_addresses"]) >= 4
    scan = report["reset_scan_and_select"]
    assert scan["sockets_seen"] == 2000
    assert all(number(scan[k]) for k in ("median_ms", "min_ms", "max_ms"))
    assert set(scan["median_ms_by_part"]) == {"scan", "choose", "count", "kernel_dump"}
    assert report["ss_for_reference"]["sockets_listed"] == 2000
    assert set(scan["median_cpu_ms_by_part"]) == set(scan["median_ms_by_part"])
    assert number(scan["median_cpu_ms"])
    idle = report["idle_agent"]
    assert idle["scrape_active_connections"] == 2000
    assert number(idle["cpu_percent_of_a_core"])
    assert number(idle["scrape_cpu_ms"])
    proxy = report["proxy_idle"]
    assert proxy["connections_held"] == 300
    assert number(proxy["rss_mib_at_20000_estimated"])
    for key in ("conntrack_before", "conntrack_with_steering_and_sockets"):
        assert set(report[key]) == {"max", "count"}
    assert all(isinstance(v["meets_goal"], bool) for v in (scan, idle, proxy))
