"""Confirmations through Prometheus (``method: annotation``): real agents, their own /metrics
scraped by a real Prometheus as pods, read back by the operator's PrometheusConfirmations.

Each agent is the real proxy-mode agent with its real HTTP server, run in a thread of the test;
Prometheus discovers them through files, relabelled into ``namespace`` and ``pod`` as the
Kubernetes ``kubernetes-pods`` job (and a PodMonitor) would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.kube.confirm import PENDING, UNREACHABLE, UNSEEN, Outcome, outcomes
from connbalance.kube.confirmprom import LAST_REQUEST_METRIC, PrometheusConfirmations
from connbalance.model import DrainRequest, PodName, PodState, RequestId
from connbalance.prometheus import Connection
from tests.prometheus.harness import HOST, Exporter, PrometheusServer, publish, wait_until

pytestmark = pytest.mark.prometheus

POLICY = "ns/auth"
T = TypeVar("T")


class Loop:
    """An event loop in a thread, where the agents run while the test reads Prometheus."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Agent:
    pod: str
    engine: ProxyAgent
    server: AgentServer


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def upstream() -> Iterator[int]:
    """A server that accepts and holds connections, saying nothing."""
    listener = socket.create_server((HOST, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in held:
            sock.close()
        listener.close()


def request(rid: str, count: int, *, deadline_in: float = 60.0) -> DrainRequest:
    now = datetime.now(UTC)
    return DrainRequest(id=RequestId(rid), count=count, window_seconds=0.0, quiet_millis=0,
                        deadline=now + timedelta(seconds=deadline_in), policy=POLICY,
                        issued_at=now)  # fmt: skip


def pod(name: str, drain: DrainRequest) -> PodState:
    return PodState(name=PodName(name), ready=True, ready_since=0.0, uid=f"uid-{name}",
                    ip=HOST, drain=drain)  # fmt: skip


async def start_agent(pod_name: str, upstream: int) -> Agent:
    engine = ProxyAgent(listen=(HOST, 0), upstream=(HOST, upstream), max_fraction=1.0,
                        state_file=None)  # fmt: skip
    await engine.start()
    server = AgentServer(engine, host=HOST, port=0, token=None)
    await server.start()
    return Agent(pod=pod_name, engine=engine, server=server)


async def stop_agent(agent: Agent) -> None:
    await agent.server.stop()
    await agent.engine.stop()


async def drain(agent: Agent, wanted: DrainRequest) -> None:
    status = await agent.engine.submit(wanted)
    if status.state.value == "running":
        await agent.engine.wait(wanted.id, timeout=20)


def as_target(agent: Agent, namespace: str, run_dir: Path) -> Exporter:
    """The agent's HTTP port as a pod's scrape target (an Exporter's target, not its process)."""
    return Exporter(pod=agent.pod, namespace=namespace, state=run_dir / f"{agent.pod}.unused",
                    container="connbalance-agent", address=HOST,
                    port=agent.server.port)  # fmt: skip


def test_the_agents_own_metrics_confirm_what_each_did_refused_or_never_saw(
    prometheus: PrometheusServer, loop: Loop, upstream: int, tmp_path: Path
):
    namespace = "ns-confirm"
    done, refused = request("cb.p.1.a", 2), request("cb.p.1.b", 5)
    older, newer = request("cb.p.1.c0", 0), request("cb.p.1.c1", 1, deadline_in=-5)
    silent = request("cb.p.1.d", 1, deadline_in=-5)
    agents = [loop.run(start_agent(name, upstream)) for name in ("auth-a", "auth-b", "auth-c")]
    clients: list[socket.socket] = []
    try:
        clients = [socket.create_connection((HOST, agents[0].engine.port), timeout=5)
                   for _ in range(4)]  # fmt: skip
        wait_until(prometheus, "vector(1)", lambda _: agents[0].engine.active_count() == 4)
        loop.run(drain(agents[0], done))
        loop.run(drain(agents[1], refused))  # 5 of no connections: over the ceiling
        loop.run(drain(agents[2], older))  # its latest; the pod's annotation says newer
        publish(prometheus, "confirm", [as_target(a, namespace, tmp_path) for a in agents])
        wait_until(
            prometheus, f'{LAST_REQUEST_METRIC}{{namespace="{namespace}"}}',
            lambda seen: len(seen) == 3, timeout=30,
        )  # fmt: skip
        reader = PrometheusConfirmations(
            connection=Connection(url=prometheus.url, timeout_seconds=5), namespace=namespace,
            grace_seconds=1.0,
        )  # fmt: skip
        pods = [pod("auth-a", done), pod("auth-b", refused), pod("auth-c", newer),
                pod("auth-d", silent)]  # fmt: skip
        found = asyncio.run(outcomes(pods, policy=POLICY, known={}, reader=reader))
    finally:
        publish(prometheus, "confirm", [])
        for sock in clients:
            sock.close()
        for agent in agents:
            loop.run(stop_agent(agent))
    assert found["auth-a"] == Outcome(request=done.id, requested=2, state="done", confirmed=2)
    assert (found["auth-b"].state, found["auth-b"].confirmed) == ("rejected", 0)
    assert "/status" in found["auth-b"].reason
    # Past their deadlines (and the grace for a scrape's lag): never seen, or not scraped.
    assert found["auth-c"].state == UNSEEN
    assert older.id in found["auth-c"].reason
    assert found["auth-d"].state == UNREACHABLE
    assert "is its agent's metrics port scraped?" in found["auth-d"].reason


def test_an_agent_exports_only_its_latest_request_and_one_not_reported_yet_is_pending(
    prometheus: PrometheusServer, loop: Loop, upstream: int, tmp_path: Path
):
    namespace = "ns-latest"
    first, second, waiting = request("cb.p.2.a", 0), request("cb.p.2.b", 0), request("cb.p.2.c", 1)
    agent = loop.run(start_agent("auth-a", upstream))
    try:
        loop.run(drain(agent, first))
        loop.run(drain(agent, second))
        publish(prometheus, "latest", [as_target(agent, namespace, tmp_path)])
        metric = f'{LAST_REQUEST_METRIC}{{namespace="{namespace}"}}'
        wait_until(prometheus, metric, lambda seen: len(seen) == 1, timeout=30)
        series = prometheus.query(metric)
        reader = PrometheusConfirmations(
            connection=Connection(url=prometheus.url, timeout_seconds=5), namespace=namespace
        )
        found = asyncio.run(outcomes([pod("auth-a", waiting)], policy=POLICY, known={},
                                     reader=reader))  # fmt: skip
    finally:
        publish(prometheus, "latest", [])
        loop.run(stop_agent(agent))
    assert [(s["metric"]["request"], s["metric"]["state"]) for s in series] == [
        (second.id, "done")
    ]
    assert found["auth-a"].state == PENDING  # its deadline is a minute away
    assert second.id in found["auth-a"].reason


def test_prometheus_down_is_reported_unreachable_naming_it():
    reader = PrometheusConfirmations(
        connection=Connection(url="http://127.0.5.1:9", timeout_seconds=2), namespace="ns"
    )
    wanted = request("cb.p.3.a", 1)
    found = asyncio.run(outcomes([pod("auth-a", wanted)], policy=POLICY, known={},
                                 reader=reader))  # fmt: skip
    assert found["auth-a"].state == UNREACHABLE
    assert "127.0.5.1:9" in found["auth-a"].reason
