"""``python -m connbalance_sim.refusals`` on a small case: one well-formed document, and the fact
it exists to show (a GOAWAY refusal costs a fail-fast client no backoff, a reset and a refused
connect do)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_refusal_comparison_prints_one_document_with_each_method_and_group():
    done = subprocess.run(
        [sys.executable, "-m", "connbalance_sim.refusals",
         "--methods", "goaway,accept-reset,closed-listener", "--window", "0.5"],
        capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(done.stdout)
    assert doc["window_s"] == 0.5
    assert len(doc["load_average"]["start"]) == 3
    rows = {(r["method"], r["group"]): r for r in doc["results"]}
    assert set(rows) == {("goaway", "failfast"), ("goaway", "retry"),
                         ("accept-reset", "failfast"), ("accept-reset", "retry"),
                         ("closed-listener", "failfast"), ("closed-listener", "retry")}
    goaway, reset = rows[("goaway", "failfast")], rows[("accept-reset", "failfast")]
    assert goaway["refused_by_proxy"] > 0
    assert goaway["transient_failures"] == 0
    assert reset["transient_failures"] > 0
    assert reset["failed_calls"] > 0
    # A closed listener is the kernel's refusal: a failed connect, as the reset is to a client
    # alone (its gain is a balancer that dials again), and nothing the proxy saw.
    closed = rows[("closed-listener", "failfast")]
    assert closed["transient_failures"] > 0
    assert closed["refused_by_proxy"] == 0
    # Every client calls again after the close, but for grpcio with retries on behind the
    # GOAWAY: the stall docs/bench.md describes (why GOAWAY is not the default) left it without
    # a call that succeeded in 2 of 5 runs here, and once in CI.
    assert all(r["first_ok_after_close_s"] is not None for r in doc["results"]
               if (r["method"], r["group"]) != ("goaway", "retry"))


def test_an_unknown_method_is_refused_naming_it():
    done = subprocess.run([sys.executable, "-m", "connbalance_sim.refusals", "--methods", "rst"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--methods: unknown rst" in done.stderr
