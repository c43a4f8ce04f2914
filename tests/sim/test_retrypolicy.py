"""The pinned retry policy, and the grpcio clients' two groups against a real server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from connbalance_sim import retrypolicy
from connbalance_sim.clients import (
    BACKOFF,
    CLOSE_DURING_CALL,
    DEADLINE,
    FAILFAST,
    OTHER,
    REFUSED_CONNECT,
    RETRY,
    cause_of,
    group_of,
)
from connbalance_sim.server import SERVICE

HOST = "127.0.13.1"


def test_the_policy_retries_unavailable_five_times_from_a_tenth_to_one_second_without_waiting():
    config = retrypolicy.service_config()
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": SERVICE}]
    assert method["waitForReady"] is False
    assert method["retryPolicy"] == {
        "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"]}
    # The four retries wait at most 0.1 + 0.2 + 0.4 + 0.8 s.
    assert retrypolicy.POLICY.budget() == pytest.approx(1.5)
    assert json.loads(retrypolicy.service_config_json()) == config


def test_the_grpcio_options_turn_retries_on_with_that_service_config():
    options = dict(retrypolicy.grpcio_retry_options())
    assert options["grpc.enable_retries"] == 1
    assert json.loads(str(options["grpc.service_config"])) == retrypolicy.service_config()


def test_failfast_clients_are_spread_as_the_go_fleet_spreads_them():
    groups = [group_of(i, count=10, failfast=3) for i in range(10)]
    assert groups.count(FAILFAST) == 3
    assert groups.count(RETRY) == 7
    assert groups[:4] == [RETRY, RETRY, RETRY, FAILFAST]
    assert {group_of(i, count=4, failfast=0) for i in range(4)} == {RETRY}
    assert {group_of(i, count=4, failfast=4) for i in range(4)} == {FAILFAST}


@contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as process:
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _lines_until(process: subprocess.Popen[str], done: Any, *, timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    for line in process.stdout:
        last = json.loads(line)
        if done(last) or time.monotonic() > deadline:
            break
    return last


def test_the_clients_report_each_group_apart_and_the_totals_as_their_sum():
    with _process("connbalance_sim.server", "--listen", f"{HOST}:0", "--metrics",
                  f"{HOST}:0") as server:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["grpc"]
        with _process("connbalance_sim.clients", "--target", f"{HOST}:{port}", "--count", "6",
                      "--failfast", "2", "--ping", "0.1", "--report", "0.2", "--ramp", "0.2",
                      "--lifetime", "30") as clients:
            line = _lines_until(
                clients, lambda r: all(g["calls_ok"] >= 5 for g in r["groups"].values())
                and r["streams"] == 6, timeout=20)
    groups = line["groups"]
    assert set(groups) == {RETRY, FAILFAST}
    assert groups[RETRY]["clients"] == 4
    assert groups[FAILFAST]["clients"] == 2
    assert groups[RETRY]["streams"] + groups[FAILFAST]["streams"] == line["streams"] == 6
    assert line["calls_ok"] == groups[RETRY]["calls_ok"] + groups[FAILFAST]["calls_ok"]
    assert line["calls_failed"] == 0
    assert groups[RETRY]["calls_ok"] >= 5
    assert groups[FAILFAST]["calls_ok"] >= 5


def test_the_clients_refuse_more_failfast_than_clients():
    done = subprocess.run([sys.executable, "-m", "connbalance_sim.clients", "--target",
                           f"{HOST}:1", "--count", "2", "--failfast", "3"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--failfast" in done.stderr


READY = grpc.ChannelConnectivity.READY
TF = grpc.ChannelConnectivity.TRANSIENT_FAILURE
CONNECTING = grpc.ChannelConnectivity.CONNECTING
IDLE = grpc.ChannelConnectivity.IDLE


def test_a_failed_call_is_blamed_on_what_its_channel_did():
    assert cause_of(at_start=TF, at_end=TF, failed_connects=0) == BACKOFF
    assert cause_of(at_start=CONNECTING, at_end=TF, failed_connects=1) == REFUSED_CONNECT
    assert cause_of(at_start=IDLE, at_end=IDLE, failed_connects=1) == REFUSED_CONNECT
    # On a ready connection that closed, then was refused on the way back: the refusal.
    assert cause_of(at_start=READY, at_end=CONNECTING, failed_connects=1) == REFUSED_CONNECT
    assert cause_of(at_start=READY, at_end=IDLE, failed_connects=0) == CLOSE_DURING_CALL
    assert cause_of(at_start=CONNECTING, at_end=READY, failed_connects=0) == OTHER
    # A call that ran out of time with no connect failing meanwhile was slow, not closed.
    deadline = grpc.StatusCode.DEADLINE_EXCEEDED
    assert cause_of(at_start=READY, at_end=READY, failed_connects=0, code=deadline) == DEADLINE
    assert cause_of(at_start=IDLE, at_end=TF, failed_connects=1, code=deadline) == (
        REFUSED_CONNECT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def test_fail_fast_calls_made_while_nothing_accepts_are_blamed_on_refused_dials_and_backoff():
    port = _free_port()
    with _process("connbalance_sim.clients", "--target", f"{HOST}:{port}", "--count", "4",
                  "--failfast", "4", "--ping", "0.1", "--report", "0.2", "--ramp", "0.1",
                  "--lifetime", "30") as clients:
        refused = _lines_until(clients, lambda r: r["calls_failed"] >= 20, timeout=20)
        with _process("connbalance_sim.server", "--listen", f"{HOST}:{port}", "--metrics",
                      f"{HOST}:0"):
            served = _lines_until(clients, lambda r: r["streams"] == 4 and r["calls_ok"] >= 8,
                                  timeout=20)
    assert refused["calls_ok"] == 0
    causes = refused["groups"][FAILFAST]["failed_by_cause"]
    assert sum(causes.values()) == refused["calls_failed"]
    assert set(causes) <= {BACKOFF, REFUSED_CONNECT}
    assert causes.get(BACKOFF, 0) > 0
    assert refused["transient_failures"] > 0
    # Once a server listens there, the calls succeed and no failure is blamed on a close.
    assert served["calls_ok"] >= 8
    assert CLOSE_DURING_CALL not in served["failed_by_cause"]
