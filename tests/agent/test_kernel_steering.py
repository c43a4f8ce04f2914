"""Reset mode's kernel steering and address filter, in network namespaces of the tests' own.

Two pods are two loopback addresses serving the same port in one namespace, as in the test
cluster (or with ``hostNetwork``): each agent must see, cycle and refuse only its own. Real
nftables, real SOCK_DESTROY; needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from connbalance.agent.reset import ResetAgent, ResetUnavailable, check_sock_destroy
from connbalance.agent.steering import KernelSteering
from connbalance.model import DRAIN_ANNOTATION, DrainRequest
from connbalance.ports.clock import SYSTEM_CLOCK
from tests.agent.netns import inside, network_namespace, nft_json, require_tools
from tests.agent.support import deadline_in, run

POD_A, POD_B, PORT = "127.0.9.1", "127.0.9.2", 3025
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.netadmin


@pytest.fixture(autouse=True, scope="module")
def _tools_and_sock_destroy() -> None:
    require_tools()
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")


@pytest.fixture
def in_namespace() -> Any:
    """Runs a scenario (a coroutine function) on its own event loop inside a fresh namespace."""
    with network_namespace() as name:

        def go(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
            inside(name, lambda: run(scenario(), timeout=60))

        yield go


@contextlib.asynccontextmanager
async def echo_servers(*hosts: str) -> AsyncIterator[None]:
    handlers: set[asyncio.Task[Any]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(echo, host, PORT) for host in hosts]
    try:
        yield
    finally:
        for server in servers:
            server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def reset_agent(address: str | None) -> AsyncIterator[ResetAgent]:
    agent = ResetAgent(port=PORT, address=address, max_fraction=1.0)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def accepted(host: str) -> bool:
    """Whether a new connection to ``host`` is taken (False: the SYN was answered with RST)."""
    try:
        _reader, writer = await asyncio.open_connection(host, PORT)
    except ConnectionRefusedError:
        return False
    writer.close()
    return True


async def echoes(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    reader, writer = conn
    try:
        writer.write(b"ping")
        async with asyncio.timeout(5):
            return await reader.readexactly(4) == b"ping"
    except (ConnectionError, asyncio.IncompleteReadError):
        return False


async def until(check: Callable[[], Coroutine[Any, Any, bool]], *, within: float) -> float:
    """Seconds until ``check()`` holds, polled; fails after ``within`` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def refusal_seconds_left(address: str) -> list[int]:
    listing = nft_json("list", "set", "inet", "connbalance", "refuse4")
    sets = [item["set"] for item in listing["nftables"] if "set" in item]
    return [
        e["elem"]["expires"]
        for e in sets[0].get("elem", [])
        if e["elem"]["val"]["concat"][0] == address
    ]


def test_while_steering_new_connections_to_the_pods_address_are_refused_and_others_carry_on(
    in_namespace,
):
    async def scenario() -> None:
        async with echo_servers(POD_A, POD_B), reset_agent(POD_A) as agent:
            established = await asyncio.open_connection(POD_A, PORT)
            agent.steer(2.0)
            assert not await accepted(POD_A)
            assert await accepted(POD_B)  # another pod on the same port, in the same namespace
            assert await echoes(established)  # established connections are untouched
            # The kernel ends the refusal by itself.
            await until(lambda: accepted(POD_A), within=10.0)
            assert await echoes(established)
            established[1].close()

    in_namespace(scenario)


def test_a_longer_refusal_is_never_shortened_by_a_shorter_one(in_namespace):
    async def scenario() -> None:
        steering = KernelSteering(address=POD_A, port=PORT, clock=SYSTEM_CLOCK)
        steering.prepare()
        steering.refuse(60.0)
        steering.refuse(1.0)
        assert [left >= 50 for left in refusal_seconds_left(POD_A)] == [True]
        steering.refuse(120.0)
        assert [left > 100 for left in refusal_seconds_left(POD_A)] == [True]
        steering.clear()
        assert refusal_seconds_left(POD_A) == []

    in_namespace(scenario)


def test_at_start_an_agent_removes_its_own_leftover_refusal_and_never_another_agents(
    in_namespace,
):
    async def scenario() -> None:
        async with echo_servers(POD_A, POD_B):
            # What a killed agent of pod A left behind, and pod B's agent refusing right now.
            for address in (POD_A, POD_B):
                steering = KernelSteering(address=address, port=PORT)
                steering.prepare()
                steering.refuse(60.0)
            assert not await accepted(POD_A)
            async with reset_agent(POD_A):
                assert await accepted(POD_A)
                assert not await accepted(POD_B)
            assert not await accepted(POD_B)  # nor on its way out

    in_namespace(scenario)


def test_a_steering_request_refuses_for_its_window_and_a_clean_stop_accepts_again(in_namespace):
    async def scenario() -> None:
        async with echo_servers(POD_A):
            agent = ResetAgent(port=PORT, address=POD_A, max_fraction=1.0)
            await agent.start()
            body = {"id": "s1", "count": 0, "windowSeconds": 30, "steer": True}
            await agent.submit(DrainRequest.from_wire(body, now=agent.clock.now()))
            assert not await accepted(POD_A)
            assert refusal_seconds_left(POD_A)[0] >= 25
            await agent.stop()
            assert await accepted(POD_A)

    in_namespace(scenario)


def test_two_agents_in_one_namespace_see_and_cycle_only_connections_to_their_own_address(
    in_namespace,
):
    async def scenario() -> None:
        async with (
            echo_servers(POD_A, POD_B),
            reset_agent(POD_A) as agent_a,
            reset_agent(POD_B) as agent_b,
        ):
            to_a = [await asyncio.open_connection(POD_A, PORT) for _ in range(3)]
            to_b = [await asyncio.open_connection(POD_B, PORT) for _ in range(4)]
            assert all([await echoes(c) for c in to_a + to_b])
            assert (agent_a.active_count(), agent_b.active_count()) == (3, 4)
            assert {c.peer for c in agent_a.connections()} == {
                w.get_extra_info("sockname") for _, w in to_a
            }
            body = {"id": "a1", "count": 3, "windowSeconds": 0, "quietMillis": 0}
            body["deadline"] = deadline_in(30)
            await agent_a.submit(DrainRequest.from_wire(body, now=agent_a.clock.now()))
            final = await agent_a.wait("a1", timeout=30)
            assert final.cycled == 3
            assert [await echoes(c) for c in to_a] == [False, False, False]
            assert all([await echoes(c) for c in to_b])
            assert agent_b.active_count() == 4
            for _, writer in to_a + to_b:
                writer.close()

    in_namespace(scenario)


def test_without_the_pods_address_the_agent_takes_every_address_and_does_not_steer(
    in_namespace, caplog
):
    async def scenario() -> None:
        async with echo_servers(POD_A, POD_B), reset_agent(None) as agent:
            conns = [await asyncio.open_connection(host, PORT) for host in (POD_A, POD_B)]
            assert agent.active_count() == 2
            agent.steer(5.0)
            assert await accepted(POD_A)
            for _, writer in conns:
                writer.close()

    with caplog.at_level(logging.WARNING):
        in_namespace(scenario)
    assert "without the pod's address" in caplog.text
    assert "cannot refuse new connections" in caplog.text


def test_without_nft_the_agent_still_cycles_and_says_why_it_does_not_steer(
    in_namespace, caplog, monkeypatch, tmp_path
):
    monkeypatch.setenv("PATH", str(tmp_path))

    async def scenario() -> None:
        async with echo_servers(POD_A), reset_agent(POD_A) as agent:
            conn = await asyncio.open_connection(POD_A, PORT)
            assert await echoes(conn)
            agent.steer(5.0)
            outcomes = await agent.close([c.id for c in agent.connections()], graceful=False)
            assert len(outcomes) == 1
            assert not await echoes(conn)
            conn[1].close()

    with caplog.at_level(logging.WARNING):
        in_namespace(scenario)
    assert "needs the nft command" in caplog.text


def test_after_sigkill_mid_window_new_connections_are_accepted_again_within_the_window(
    in_namespace, tmp_path
):
    window = 6.0
    annotations = tmp_path / "annotations"

    async def scenario() -> None:
        async with echo_servers(POD_A):
            agent = await start_agent_process(annotations)
            try:
                request = {"id": "k1", "count": 0, "windowSeconds": window, "steer": True}
                request["deadline"] = deadline_in(60)
                annotations.write_text(f"{DRAIN_ANNOTATION}={json.dumps(json.dumps(request))}\n")
                await until(lambda: refused(POD_A), within=10.0)
                await asyncio.sleep(window / 2)  # mid-window
                agent.send_signal(signal.SIGKILL)
                agent.wait(timeout=10)
                assert not await accepted(POD_A)  # the kernel, not the process, refuses
                waited = await until(lambda: accepted(POD_A), within=window)
                assert waited < window
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
                assert agent.stderr is not None
                agent.stderr.close()

    in_namespace(scenario)


async def refused(host: str) -> bool:
    return not await accepted(host)


async def start_agent_process(annotations: Path) -> subprocess.Popen[str]:
    """``connbalance agent`` in reset mode for pod A, in this thread's namespace."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), "POD_IP": POD_A}
    env.pop("POD_NAME", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connbalance.agent",
            "--mode",
            "reset",
            "--port",
            str(PORT),
            "--listen",
            f"{POD_A}:0",
            "--annotations-file",
            str(annotations),
            "--loop",
            "asyncio",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(30):
        while not any(re.search(r"agent up: .*port 3025 on 127\.0\.9\.1", line) for line in lines):
            line = await loop.run_in_executor(None, proc.stderr.readline)
            assert line, "".join(lines)
            lines.append(line)
    return proc
