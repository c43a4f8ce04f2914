"""The grpc-go client fleet (tests/goclients) against real simulated servers on loopback.

The binary is built once per source (tests/goclients/build.py, cached under ~/.cache/connbalance,
made by ``make goclients-build``; a cold machine builds it here from the Go module proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connbalance.agent.engine import DrainEngine
from connbalance.agent.proxy import ProxyAgent, Refusal
from connbalance.agent.reset import ResetAgent, ResetUnavailable, check_sock_destroy
from connbalance.model import DrainRequest, RequestId
from connbalance_sim import harm
from connbalance_sim.balancer import FlowHashBalancer
from connbalance_sim.clients import BACKOFF, CAUSES, REFUSED_CONNECT
from connbalance_sim.fleet import LocalFleet
from connbalance_sim.retrypolicy import service_config_json
from tests.goclients import build

NET = "127.0.11"
Report = dict[str, Any]


@pytest.fixture(scope="module")
def binary() -> Path:
    return build.ensure_built()


def _require_reset_mode(*, steering: bool) -> None:
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    if steering and shutil.which("nft") is None:
        pytest.skip("no nft command (make system-deps installs nftables)")


class GoFleet:
    """One goclients process, and the last report line it printed."""

    def __init__(self, binary: Path, *, target: str, count: int, failfast: int,
                 backoff_ms: int = 100) -> None:
        self._args = [str(binary), "--target", target, "--count", str(count),
                      "--failfast", str(failfast), "--service-config", service_config_json(),
                      "--ping", "0.2", "--backoff-ms", str(backoff_ms),
                      "--report", "0.1", "--ramp", "0.5", "--lifetime", "120",
                      "--log-failures"]
        self.latest: Report = {}
        # Each failed call as the client logged it (when, which client, the status), for the
        # assertion messages: a count alone does not say which call failed or why.
        self.failures: list[dict[str, object]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._readers = [asyncio.create_task(self._read(self._process)),
                         asyncio.create_task(self._read_failures(self._process))]

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.latest = json.loads(line)

    async def _read_failures(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            with contextlib.suppress(ValueError):
                self.failures.append(json.loads(line))

    async def stop(self) -> Report:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            await asyncio.wait_for(self._process.wait(), timeout=10)
        for reader in self._readers:
            await reader
        return self.latest

    async def until(self, what: str, check: Callable[[Report], bool], *,
                    timeout: float = 20.0) -> Report:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.latest and check(self.latest)):
            if loop.time() > deadline:
                raise AssertionError(f"not {what} in {timeout:g}s; last report: {self.latest}")
            await asyncio.sleep(0.1)
        return self.latest


class Server:
    """``python -m connbalance_sim.server`` on ``host``, named ``name`` in its metadata."""

    def __init__(self, host: str, *, name: str, port: int = 0) -> None:
        self.host, self.name, self.port = host, name, port
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connbalance_sim.server", "--listen", f"{self.host}:{self.port}",
            "--metrics", f"{self.host}:0", "--name", self.name, "--grace", "0.2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout=20)
        self.port = int(json.loads(line)["grpc"])

    async def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            await asyncio.wait_for(self._process.wait(), timeout=10)


def on(server: str, count: int) -> Callable[[Report], bool]:
    return lambda report: bool(report["servers"].get(server, 0) == count)


# A proxy closes a connection once it has been quiet this long with the server's word last. At 0 a
# loaded machine let it close between an answer's headers and its trailers, and that call failed
# (an answer that has begun is never retried); the bench's strategies wait 100 ms too.
_QUIET_MILLIS = 100


def _drain(agent: DrainEngine, *, count: int, steer: bool, window: float) -> DrainRequest:
    now = datetime.now(UTC)
    return DrainRequest(id=RequestId(f"go-{now.timestamp()}"), count=count, window_seconds=window,
                        quiet_millis=_QUIET_MILLIS, deadline=now + timedelta(seconds=window + 5),
                        steer=steer)


def test_go_clients_come_back_when_their_server_restarts_on_the_same_address(binary):
    async def scenario() -> Report:
        first = Server(f"{NET}.1", name="first")
        await first.start()
        fleet = GoFleet(binary, target=f"{first.host}:{first.port}", count=6, failfast=3)
        await fleet.start()
        second = Server(first.host, name="second", port=first.port)
        try:
            await fleet.until("6 streams on the first server", on("first", 6))
            # A graceful stop: GOAWAY, then the streams end; nothing listens for a moment.
            await first.stop()
            await second.start()
            return await fleet.until("6 streams on the second server", on("second", 6))
        finally:
            await fleet.stop()
            await first.stop()
            await second.stop()

    report = asyncio.run(scenario())
    assert report["stream_breaks"] == 6
    # grpc-go's own reconnect: each channel was READY, lost its connection, and is READY again.
    assert report["reconnects"] == 6
    assert report["dials"] >= 12


@pytest.mark.netadmin
def test_go_clients_redial_the_same_server_when_a_reset_agent_destroys_their_connections(binary):
    _require_reset_mode(steering=False)

    async def scenario() -> tuple[Report, int]:
        server = Server(f"{NET}.2", name="only")
        await server.start()
        agent = ResetAgent(port=server.port, address=server.host, max_fraction=1.0,
                           registry=CollectorRegistry())
        await agent.start()
        fleet = GoFleet(binary, target=f"{server.host}:{server.port}", count=6, failfast=3)
        await fleet.start()
        try:
            await fleet.until("6 streams", on("only", 6))
            status = await agent.submit(_drain(agent, count=6, steer=False, window=0.5))
            assert status.reason == ""
            await fleet.until("6 streams again", lambda r: r["stream_breaks"] == 6)
            report = await fleet.until("6 streams again", on("only", 6))
            return report, agent.cycled_total
        finally:
            await fleet.stop()
            await agent.stop()
            await server.stop()

    report, cycled = asyncio.run(scenario())
    assert cycled == 6
    assert report["reconnects"] == 6
    assert report["stream_errors_by_code"] == {"Unavailable": 6}
    # Nothing refused the redial, so no call met a channel in TRANSIENT_FAILURE.
    assert report["groups"]["retry"]["calls_failed"] == 0


async def _steer_one_server(binary: Path, *, redials: int, backoff_ms: int = 100) -> tuple[
        Report, Report, str, Any]:
    """Two reset-mode pods behind the balancer, 40 clients (20 of them fail-fast, each
    reconnecting on grpc-go's backoff from ``backoff_ms``); the pod that holds more sheds all of
    them with steering. Returns the reports before and after, the shedding server's name, and
    the balancer's counts."""
    balancer = FlowHashBalancer(host=f"{NET}.10", health_interval=0.1, redials=redials)
    await balancer.start()
    pods = LocalFleet(hosts=[f"{NET}.11", f"{NET}.12"], balancer=balancer, agent_mode="reset")
    fleet = GoFleet(binary, target=f"{NET}.10:{balancer.port}", count=40, failfast=20,
                    backoff_ms=backoff_ms)
    try:
        await pods.start()
        for name in pods.names:
            await pods.wait_ready(name)
        await fleet.start()
        before = await fleet.until("40 streams", lambda r: r["streams"] == 40)
        shedding = max(pods.pods(), key=lambda p: before["servers"].get(p.uid, 0))
        moving = before["servers"][shedding.uid]
        status = await shedding.agent.submit(
            _drain(shedding.agent, count=moving, steer=True, window=1.0))
        assert status.reason == ""
        # The window and the agent's margin: 2 s; the clients' backoff is at most 5 x backoff_ms.
        await asyncio.sleep(2.0 + 5 * backoff_ms / 1000)
        after = await fleet.until("40 streams again", lambda r: r["streams"] == 40)
        return before, after, shedding.uid, balancer.stats
    finally:
        await fleet.stop()
        await pods.stop()
        await balancer.stop()


@pytest.mark.netadmin
def test_go_clients_with_the_retry_policy_fail_no_call_while_a_steering_reset_agent_moves_them(
        binary):
    _require_reset_mode(steering=True)
    # Through a balancer that dials again when a dial is refused, as Teleport's proxy dials the
    # auth Service: the shedding server's kernel refuses, the balancer dials another.
    before, after, shedding, stats = asyncio.run(_steer_one_server(binary, redials=5))
    assert before["calls_failed"] == 0
    assert stats.refused > 0
    assert stats.redialled > 0
    # Every client it shed landed on the other server, and none of the retry group's calls
    # failed. Fail-fast clients may lose the call in flight when their connection is reset, and
    # the calls of the one in 2**6 the balancer resets after six refused dials; the policy
    # retries both.
    assert after["servers"].get(shedding, 0) <= 2
    assert after["reconnects"] >= 10
    assert after["groups"]["retry"]["calls_failed"] == 0, after["groups"]


@pytest.mark.netadmin
def test_go_clients_behind_a_balancer_that_resets_refused_clients_need_their_retry_policy(binary):
    _require_reset_mode(steering=True)
    # As an NLB does: a refused dial resets the client, whose channel waits out grpc-go's backoff
    # in TRANSIENT_FAILURE. Fail-fast calls made meanwhile fail; the retry policy's attempts
    # (0.1 s to 1 s apart) outlast most such waits, not every one. A 0.3 s backoff base keeps
    # each refused channel there for 0.3 s or more, a call and a half at one call per 0.2 s.
    # With the 0.1 s base of the other tests, a loaded CI run saw one fail-fast call fail in
    # all, too few to tell the two groups apart.
    before, after, shedding, stats = asyncio.run(
        _steer_one_server(binary, redials=0, backoff_ms=300))
    assert before["calls_failed"] == 0
    assert after["servers"].get(shedding, 0) <= 2
    retry, failfast = after["groups"]["retry"], after["groups"]["failfast"]
    assert retry["transient_failures"] > 0
    assert failfast["transient_failures"] > 0
    assert failfast["failed_by_code"].get("Unavailable", 0) > 0
    assert retry["calls_failed"] < failfast["calls_failed"], after["groups"]
    assert stats.refused > 0


async def _cycle_go_clients_into_proxy_refusals(binary: Path, *, refusal: Refusal) -> tuple[
        Report, Report, ProxyAgent]:
    """Eight grpc-go clients (four fail fast) behind one steering proxy that cycles them all and
    refuses their reconnects for 1.5 s, so each meets refusals until the refusal ends."""
    server = Server(f"{NET}.20", name="behind-proxy")
    await server.start()
    agent = ProxyAgent(listen=(server.host, 0), upstream=(server.host, server.port),
                       max_fraction=1.0, registry=CollectorRegistry(), refusal=refusal)
    await agent.start()
    fleet = GoFleet(binary, target=f"{server.host}:{agent.port}", count=8, failfast=4)
    await fleet.start()
    try:
        before = await fleet.until("8 streams", on("behind-proxy", 8))
        status = await agent.submit(_drain(agent, count=8, steer=True, window=0.5))
        assert status.reason == ""
        await asyncio.sleep(2.0)
        after = await fleet.until("8 streams again",
                                  lambda r: r["stream_breaks"] >= 8 and r["streams"] == 8)
        return before, {**after, "logged_failures": fleet.failures}, agent
    finally:
        await fleet.stop()
        await agent.stop()
        await server.stop()


def test_go_clients_refused_with_goaway_redial_without_backoff_and_their_retry_policy_fails_nothing(
        binary):
    before, after, agent = asyncio.run(
        _cycle_go_clients_into_proxy_refusals(binary, refusal="auto"))
    assert agent.cycled_total == 8
    assert agent.refused_total > 0
    assert agent.refused_by_goaway_total == agent.refused_total
    # grpc-go took each GOAWAY as a graceful close: no connect failed, so no backoff.
    assert after["transient_failures"] == 0
    assert after["groups"]["retry"]["calls_failed"] == 0, after["logged_failures"]
    # grpc-go retries a stream a GOAWAY left unprocessed once without a retry policy (its
    # csAttempt.shouldRetry, first attempt only), so a fail-fast call that meets two refused
    # connections in a row fails Unavailable. A loaded CI run met one; nothing else may fail.
    failfast = after["groups"]["failfast"]
    assert set(failfast["failed_by_code"]) <= {"Unavailable"}, after["groups"]
    assert after["calls_ok"] > before["calls_ok"]


def test_go_clients_refused_with_a_reset_wait_out_their_backoff(binary):
    before, after, agent = asyncio.run(
        _cycle_go_clients_into_proxy_refusals(binary, refusal="reset"))
    assert agent.refused_total > 0
    assert agent.refused_by_goaway_total == 0
    assert after["transient_failures"] > before["transient_failures"]
    assert after["groups"]["failfast"]["calls_failed"] > 0, after["groups"]


def test_go_clients_name_the_cause_of_each_failed_call_as_the_grpcio_fleet_does(binary):
    # The bench's accounting (connbalance_sim.harm) reads each group's failed_by_cause: every
    # failed call must have one, from the grpcio fleet's list. A reset refusal leaves the
    # channel waiting out its backoff, so fail-fast calls fail in it or on the failed connect.
    _, after, _ = asyncio.run(_cycle_go_clients_into_proxy_refusals(binary, refusal="reset"))
    for group in after["groups"].values():
        assert set(group["failed_by_cause"]) <= set(CAUSES), group
        assert sum(group["failed_by_cause"].values()) == group["calls_failed"], group
    failfast = after["groups"]["failfast"]["failed_by_cause"]
    assert failfast.get(BACKOFF, 0) + failfast.get(REFUSED_CONNECT, 0) > 0, failfast


def test_the_bench_runs_with_go_clients_and_accounts_for_their_failed_calls_by_group_and_cause(
        binary, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "connbalance_sim.bench", "--quick", "--json", "--out",
         str(tmp_path), "--net", NET, "--parallel", "2", "--go-clients", str(binary),
         "--strategies", "none,connbalance"],
        capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(done.stdout)
    assert doc["scenario"]["go_clients"] == binary.name
    assert [r["strategy"] for r in doc["results"]] == ["none", "connbalance"]
    for r in doc["results"]:
        assert set(r["groups"]) == {"retry", "failfast"}
        assert {g["clients"] for g in r["groups"].values()} == {30}
        assert set(r["failed_by_cause"]) == set(harm.CAUSES)
        assert sum(r["failed_by_cause"].values()) == r["failed_calls"] == sum(
            g["failed_calls"] for g in r["groups"].values())
        assert r["calls"] > 0
