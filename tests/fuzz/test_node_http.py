"""Fuzzing the node agent's HTTP face (read-only) through its real HTTP server on loopback
(agent/httpserve.py).

Whatever the method, path, pod name or headers: never a 5xx; a pod nothing was asked for is a
404 whose JSON error names it; and nothing is served, read or recorded.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connbalance.agent.node import NodeAgent
from connbalance.agent.nodehttp import NodeAgentServer
from tests.fuzz.drainwire import FUZZ
from tests.fuzz.loopthread import LoopThread
from tests.fuzz.rawhttp import exchange

HOST = "127.0.12.5"


class NoPolicies:
    reads = 0

    def read(self, *, namespace, name):
        NoPolicies.reads += 1
        return None


class NeverFinds:
    name = "never"

    def find(self, pod):
        raise AssertionError(f"looked for the network namespace of {pod}")

    def still(self, pod, found):
        raise AssertionError("never found")


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[LoopThread, NodeAgent, int]]:
    loop = LoopThread()
    agent = NodeAgent(node="n", strategies=[NeverFinds()], policies=NoPolicies(), max_fraction=1.0)
    server = NodeAgentServer(agent, host=HOST, port=0)
    loop.call(server.start())
    yield loop, agent, server.port
    loop.call(server.stop())
    loop.close()
    assert NoPolicies.reads == 0


segments = st.text(max_size=40).map(lambda t: urllib.parse.quote(t, safe=""))
# Names as Kubernetes allows them (DNS labels): the route's own; any other text may be refused
# by the router first (a plain-text 404), which is still no 5xx.
kube_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
header_values = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or c >= 128)
)


@FUZZ
@given(methods, segments, segments, header_values, st.binary(max_size=300))
def test_any_request_is_answered_without_a_5xx_and_changes_nothing(node, method, namespace, name,
                                                                   value, body):  # fmt: skip
    loop, agent, port = node
    path = f"/v1/pods/{namespace}/{name}"
    answer = exchange(HOST, port, method=method, path=path, body=body,
                      headers=[(b"Authorization", value), (b"Content-Type", value)])  # fmt: skip
    assert 400 <= answer.status < 500, answer
    if method not in ("GET", "HEAD"):
        assert answer.status in (404, 405), answer
    nothing_served(loop, agent)


@FUZZ
@given(kube_names, kube_names, header_values)
def test_a_pod_nothing_was_asked_for_is_a_json_404_naming_it(node, namespace, name, value):
    loop, agent, port = node
    answer = exchange(HOST, port, method="GET", path=f"/v1/pods/{namespace}/{name}",
                      headers=[(b"Authorization", value)])  # fmt: skip
    assert answer.status == 404, answer
    assert f"{namespace}/{name}" in answer.json()["error"]
    nothing_served(loop, agent)


def nothing_served(loop: LoopThread, agent: NodeAgent) -> None:
    async def status() -> dict:
        return agent.status()

    assert loop.call(status())["pods"] == []
