"""The closed loop: what a real agent says became of a request, read over HTTP: a sidecar's
/status, and the node agent's answer for one pod on the pod's node address (the node agent's own
app, in process, serving a pod on loopback as it serves a hostNetwork pod)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.agent.node import NodeAgent, NodePod
from connbalance.agent.nodehttp import NodeAgentServer
from connbalance.agent.podns import HostStrategy
from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from connbalance.kube.confirm import (
    PENDING,
    UNCONFIRMED,
    UNREACHABLE,
    UNSEEN,
    AgentStatusReader,
    NodeAgentStatusReader,
    Outcome,
    outcomes,
)
from connbalance.model import DrainRequest, PodName, PodState, RequestId
from tests.agent.podnet import connect, echo_server

TOKEN = "agent-token"
POLICY = "teleport/auth"


def request(rid: str, count: int) -> DrainRequest:
    now = datetime.now(UTC)
    return DrainRequest(id=RequestId(rid), count=count, window_seconds=0.0, quiet_millis=0,
                        deadline=now + timedelta(seconds=30), policy=POLICY, issued_at=now)


def pod(name: str, drain: DrainRequest | None, ip: str | None = "127.0.0.1") -> PodState:
    return PodState(name=PodName(name), ready=True, ready_since=0.0, uid=f"uid-{name}", ip=ip,
                    drain=drain)


async def with_agent(scenario):
    agent = ProxyAgent(listen=("127.0.0.1", 0), upstream=("127.0.0.1", 9), max_fraction=1.0,
                       state_file=None)
    await agent.start()
    server = AgentServer(agent, host="127.0.0.1", port=0, token=TOKEN)
    await server.start()
    try:
        return await scenario(agent, AgentStatusReader(port=server.port, token=TOKEN))
    finally:
        await server.stop()
        await agent.stop()


def test_the_agent_confirms_what_it_did_refused_and_never_saw():
    done, refused, unknown = request("cb.e.1.a", 0), request("cb.e.1.b", 5), request("cb.e.1.c", 1)

    async def scenario(agent, reader):
        await agent.submit(done)
        await agent.wait(done.id, timeout=10)
        await agent.submit(refused)  # 5 of 0 open connections: over the ceiling
        pods = [pod("a", done), pod("b", refused), pod("c", unknown)]
        return await outcomes(pods, policy=POLICY, known={}, reader=reader)

    found = asyncio.run(with_agent(scenario))
    assert (found["a"].state, found["a"].confirmed) == ("done", 0)
    assert found["b"].state == "rejected"
    assert "ceiling" in found["b"].reason
    assert found["c"].state == UNSEEN


def test_a_final_answer_is_kept_and_not_asked_again():
    drain = request("cb.e.2.a", 3)
    kept = Outcome(request=drain.id, requested=3, state="done", confirmed=3)
    gone = AgentStatusReader(port=9, token=TOKEN)  # nothing listens: asking would fail
    found = asyncio.run(outcomes([pod("a", drain)], policy=POLICY, known={"a": kept},
                                 reader=gone))
    assert found["a"] is kept


def test_an_agent_that_does_not_answer_is_reported_unreachable_naming_the_url():
    drain = request("cb.e.3.a", 3)
    found = asyncio.run(outcomes([pod("a", drain)], policy=POLICY, known={},
                                 reader=AgentStatusReader(port=9, token=TOKEN, timeout=2)))
    assert found["a"].state == UNREACHABLE
    assert "127.0.0.1:9/status" in found["a"].reason


def test_without_a_way_to_ask_it_says_unconfirmed_and_other_policies_are_left_out():
    mine, theirs = request("cb.e.4.a", 3), request("cb.x.1.b", 3)
    theirs = DrainRequest(**{**{f: getattr(theirs, f) for f in theirs.__slots__},
                             "policy": "other/balancer"})
    found = asyncio.run(outcomes([pod("a", mine), pod("b", theirs)], policy=POLICY, known={},
                                 reader=None))
    assert found == {"a": Outcome(request=mine.id, requested=3, state=UNCONFIRMED)}


def test_an_outcome_round_trips_through_the_pod_entry_of_status():
    outcome = Outcome(request="cb.e.5.a", requested=7, state="done", confirmed=6, reason="x")
    assert Outcome.from_status({"name": "a", **outcome.to_status()}) == outcome


# --- the node agent, on the pod's node address -------------------------------------------------

NODE_POD_IP = "127.0.61.1"
NODE_SPEC: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "auth"}},
    "actuation": {"agent": "node", "serverPort": 0},
}


class Specs:
    """The ConnectionBalancer specs the node agent reads, by (namespace, name)."""

    def __init__(self, specs: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.specs = specs

    def read(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        return self.specs.get((namespace, name))


def node_pod(name: str, drain: DrainRequest | None, host_ip: str | None = "127.0.0.1"
             ) -> PodState:  # fmt: skip
    return PodState(name=PodName(name), ready=True, ready_since=0.0, uid=f"uid-{name}",
                    ip=NODE_POD_IP, host_ip=host_ip, drain=drain)  # fmt: skip


def annotation(drain: DrainRequest) -> str:
    return json.dumps({**drain.to_wire(), "steer": False})


async def with_node_agent(specs: Specs, scenario, *, clock=time.time):
    node = NodeAgent(node="node-a", strategies=[HostStrategy()], policies=specs, max_fraction=1.0)
    server = NodeAgentServer(node, host="127.0.0.1", port=0)
    await server.start()
    try:
        reader = NodeAgentStatusReader(port=server.port, namespace="teleport", clock=clock)
        return await scenario(node, reader)
    finally:
        await server.stop()
        await node.stop()


def served(name: str, drain: DrainRequest) -> NodePod:
    return NodePod(uid=f"uid-{name}", namespace="teleport", name=name, ip=NODE_POD_IP,
                   labels=(("app", "auth"),), drain=annotation(drain))  # fmt: skip


@pytest.mark.netadmin
def test_the_node_agent_confirms_what_it_cycled_for_a_pod_on_the_pods_node_address():
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    with socket.socket() as probe:
        probe.bind((NODE_POD_IP, 0))
        port = probe.getsockname()[1]
    drain = request("cb.n.1.a", 2)
    specs = Specs({("teleport", "auth"): {**NODE_SPEC, "actuation": {"agent": "node",
                                                                     "serverPort": port}}})

    async def scenario(node, reader):
        await node.update(served("auth-0", drain))
        for _ in range(100):
            found = await outcomes([node_pod("auth-0", drain)], policy=POLICY, known={},
                                   reader=reader)  # fmt: skip
            if found["auth-0"].final:
                return found
            await asyncio.sleep(0.1)
        return found

    with echo_server(NODE_POD_IP, port, netns=None):
        clients = connect(NODE_POD_IP, port, 4, netns=None)
        try:
            found = asyncio.run(with_node_agent(specs, scenario))
        finally:
            for sock in clients:
                sock.close()
    assert found["auth-0"] == Outcome(request=drain.id, requested=2, state="done", confirmed=2)


def test_a_request_the_node_agent_refused_is_reported_refused_with_its_reason():
    drain = request("cb.n.2.a", 3)
    specs = Specs({("teleport", "auth"): {**NODE_SPEC, "actuation": {}}})  # a sidecar balancer

    async def scenario(node, reader):
        await node.update(served("auth-0", drain))
        return await outcomes([node_pod("auth-0", drain)], policy=POLICY, known={},
                              reader=reader)  # fmt: skip

    found = asyncio.run(with_node_agent(specs, scenario))
    assert found["auth-0"].state == "rejected"
    assert "actuation.agent sidecar" in found["auth-0"].reason


@pytest.mark.parametrize(("after_deadline", "state"), [(False, PENDING), (True, UNSEEN)])
def test_a_pod_the_node_agent_knows_nothing_of_is_pending_until_the_deadline_then_unseen(
    after_deadline, state
):
    drain = request("cb.n.3.a", 3)
    now = drain.deadline.timestamp() + (1.0 if after_deadline else -1.0)

    async def scenario(node, reader):
        return await outcomes([node_pod("auth-0", drain)], policy=POLICY, known={},
                              reader=reader)  # fmt: skip

    found = asyncio.run(with_node_agent(Specs({}), scenario, clock=lambda: now))
    assert found["auth-0"].state == state
    assert "/v1/pods/teleport/auth-0" in found["auth-0"].reason


def test_the_node_agent_is_asked_on_the_pods_node_address_not_the_pods_own():
    drain = request("cb.n.4.a", 3)

    async def scenario(node, reader):
        elsewhere = node_pod("auth-0", drain, host_ip="127.0.61.9")  # nothing listens there
        unscheduled = node_pod("auth-1", drain, host_ip=None)
        return await outcomes([elsewhere, unscheduled], policy=POLICY, known={},
                              reader=reader)  # fmt: skip

    found = asyncio.run(with_node_agent(Specs({}), scenario))
    assert found["auth-0"].state == UNREACHABLE
    assert "http://127.0.61.9:" in found["auth-0"].reason
    assert found["auth-1"].state == UNREACHABLE
    assert "no hostIP" in found["auth-1"].reason
