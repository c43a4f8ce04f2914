"""The closed loop: what a real agent says became of a request, read over its HTTP /status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.kube.confirm import (
    UNCONFIRMED,
    UNREACHABLE,
    UNSEEN,
    AgentStatusReader,
    Outcome,
    outcomes,
)
from connbalance.model import DrainRequest, PodName, PodState, RequestId

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
