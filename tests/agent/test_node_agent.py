"""The node agent: who may ask, and serving a pod from outside its network namespace, for real.

The served pod is an echo server in a network namespace the test creates (``ip netns add``) and
a cgroup named for the pod's uid; the node agent runs in the test's own (root) namespace, finds
the pod by its cgroup in the real /proc, enters its namespace, and cycles and steers there. The
same address and port also serve in the root namespace, to show the node agent touches nothing
outside the pod. Real SOCK_DESTROY and nftables; needs root.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from connbalance.agent.node import NodeAgent, NodePod, policy_name, refusal
from connbalance.agent.podns import CgroupStrategy, Found, PodRef
from connbalance.agent.reset import ResetUnavailable, check_sock_destroy
from connbalance.agent.state import SeenRequests
from connbalance.model import DrainRequest
from tests.agent.netns import network_namespace, require_tools
from tests.agent.podnet import accepted, connect, echo_server, echoes, pod_cgroup, refusals
from tests.agent.support import deadline_in, run

POD_IP, PORT = "127.0.9.1", 3025
LABELS = {"app.kubernetes.io/component": "auth", "app.kubernetes.io/instance": "teleport"}
NODE_SPEC: dict[str, Any] = {
    "selector": {"matchLabels": LABELS},
    "actuation": {"agent": "node", "serverPort": PORT},
}


def pod(*, uid: str | None = None, drain: dict[str, Any] | None = None, **labels: str) -> NodePod:
    return NodePod(
        uid=uid or str(uuid.uuid4()), namespace="teleport", name="teleport-auth-0", ip=POD_IP,
        labels=tuple(sorted((labels or LABELS).items())),
        drain=None if drain is None else json.dumps(drain),
    )  # fmt: skip


def request(request_id: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"id": request_id, "count": 1, "policy": "teleport/auth", "deadline": deadline_in(60),
            **fields}  # fmt: skip


class Policies:
    """ConnectionBalancer specs by (namespace, name); counts the reads."""

    def __init__(self, specs: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self.specs = specs
        self.reads = 0

    def read(self, *, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.specs.get((namespace, name))


class NeverFinds:
    name = "never"

    def find(self, pod: PodRef) -> Found | str:
        raise AssertionError(f"looked for the namespace of {pod}, which must not be served")

    def still(self, pod: PodRef, found: Found) -> bool:
        raise AssertionError("never found")


def agent(policies: Policies, *, state_dir: Path | None = None, strategy: Any = None) -> NodeAgent:
    return NodeAgent(
        node="node-a", strategies=[strategy or NeverFinds()], policies=policies,
        max_fraction=1.0, state_dir=state_dir,
    )  # fmt: skip


def drain(**fields: Any) -> DrainRequest:
    from connbalance.ports.clock import SYSTEM_CLOCK

    return DrainRequest.from_wire(request(**fields), now=SYSTEM_CLOCK.now())


# --- who may ask -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels", "says"),
    [
        (None, LABELS, "names no ConnectionBalancer that exists (teleport/auth)"),
        ({"selector": {}}, LABELS, "ConnectionBalancer teleport/auth is invalid"),
        (NODE_SPEC, {"app.kubernetes.io/component": "proxy"}, "does not select pod teleport/"),
        ({**NODE_SPEC, "actuation": {}}, LABELS, "has actuation.agent sidecar: the pod's own"),
    ],
    ids=["no-balancer", "invalid", "not-selected", "sidecar"],
)
def test_a_request_is_refused_unless_a_node_balancer_selects_the_pod(spec, labels, says):
    reason, policy = refusal(pod(**labels), drain(), spec)
    assert policy is None
    assert says in reason


def test_a_request_from_a_node_balancer_that_selects_the_pod_names_its_server_port():
    reason, policy = refusal(pod(), drain(), {**NODE_SPEC, "actuation": {"agent": "node",
                                                                        "serverPort": 4000}})
    assert reason == ""
    assert policy is not None
    assert policy.actuation.server_port == 4000


@pytest.mark.parametrize(
    ("named", "found"),
    [("teleport/auth", ("teleport", "auth")), ("other/auth", None), ("auth", None), ("", None)],
)
def test_a_policy_must_be_a_balancer_in_the_pods_own_namespace(named, found):
    assert policy_name(pod(), drain(policy=named)) == found


def test_a_refused_request_is_reported_once_and_never_looks_for_the_pods_namespace():
    policies = Policies({("teleport", "auth"): {**NODE_SPEC, "actuation": {}}})
    node = agent(policies)
    target = pod(drain=request("forged", count=5))

    async def scenario() -> None:
        await node.update(target)
        await node.update(target)  # the same annotation again: not read twice
        await node.update(pod(uid=target.uid, drain=request("other", policy="elsewhere/x")))

    run(scenario())
    assert policies.reads == 1
    status = node.pod_status("teleport", "teleport-auth-0")
    assert status is not None
    requests = {r["id"]: r for r in status["requests"]}
    assert {r["state"] for r in requests.values()} == {"rejected"}
    assert "actuation.agent sidecar" in requests["forged"]["reason"]
    assert "names no ConnectionBalancer in the pod's namespace" in requests["other"]["reason"]
    assert b'connbalance_node_agent_requests_total{result="unauthorized"} 2.0' in (
        node.metrics.render()
    )


def test_an_id_a_previous_node_agent_recorded_for_the_pod_is_a_duplicate(tmp_path):
    target = pod(drain=request("seen-before"))
    SeenRequests(path=tmp_path / f"{target.uid}.json").record(
        {"id": "seen-before", "count": 1, "cycled": 1, "forced": 0, "state": "done"}
    )
    policies = Policies({("teleport", "auth"): NODE_SPEC})
    node = agent(policies, state_dir=tmp_path)
    run(node.update(target))
    assert policies.reads == 0
    assert node.engine(target.uid) is None
    assert b'connbalance_node_agent_requests_total{result="duplicate"} 1.0' in node.metrics.render()


def test_the_state_of_pods_no_longer_on_the_node_is_dropped(tmp_path):
    here, gone = pod(), pod()
    for each in (here, gone):
        SeenRequests(path=tmp_path / f"{each.uid}.json").record({"id": "x", "count": 0})
    node = agent(Policies({}), state_dir=tmp_path)
    run(node.sync([here]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{here.uid}.json"]
    run(node.forget(here.uid))
    assert list(tmp_path.iterdir()) == []


# --- serving a pod in its own network namespace ------------------------------------------------


@pytest.fixture
def served_pod(tmp_path):
    """A pod: an echo server on POD_IP:PORT in a namespace and cgroup of its own; and the same
    address and port in the root namespace, which is not the pod's."""
    require_tools()
    try:
        check_sock_destroy()
    except ResetUnavailable as exc:
        pytest.skip(f"SOCK_DESTROY unavailable on this machine: {exc}")
    uid = str(uuid.uuid4())
    with (
        network_namespace() as netns,
        echo_server(POD_IP, PORT, netns=netns) as server,
        pod_cgroup(uid, server.pid),
        echo_server(POD_IP, PORT, netns=None),
    ):
        yield uid, netns


@pytest.mark.netadmin
def test_it_cycles_exactly_the_count_asked_in_the_pods_namespace_and_steers_only_there(
    served_pod, tmp_path
):
    uid, netns = served_pod
    inside = connect(POD_IP, PORT, 6, netns=netns)
    outside = connect(POD_IP, PORT, 3, netns=None)
    node = agent(Policies({("teleport", "auth"): NODE_SPEC}), state_dir=tmp_path,
                 strategy=CgroupStrategy())  # fmt: skip
    asked = request("cycle-4", count=4, windowSeconds=3, quietMillis=0, steer=True)

    async def scenario() -> None:
        await node.update(pod(uid=uid, drain=asked))
        engine = node.engine(uid)
        assert engine is not None
        assert not accepted(POD_IP, PORT, netns=netns)  # the pod refuses for the window
        assert accepted(POD_IP, PORT, netns=None)  # the root namespace does not
        assert refusals(POD_IP, netns=None) == []
        final = await engine.wait("cycle-4", timeout=30)
        assert (final.count, final.cycled) == (4, 4)
        status = node.status()["pods"][0]
        assert status["netns"].startswith("cgroup: pid ")
        assert status["requests"][0]["cycled"] == 4
        await node.stop()

    try:
        run(scenario())
        assert sorted(echoes(s) for s in inside) == [False] * 4 + [True] * 2
        assert all(echoes(s) for s in outside)
        assert accepted(POD_IP, PORT, netns=netns)  # a clean stop lifts the refusal
        # A node agent started afresh knows the id from the pod's state file.
        again = agent(Policies({("teleport", "auth"): NODE_SPEC}), state_dir=tmp_path,
                      strategy=CgroupStrategy())  # fmt: skip
        run(again.update(pod(uid=uid, drain=asked)))
        assert again.engine(uid) is None
        assert all(echoes(s) for s in [s for s in inside if echoes(s)] + outside)
    finally:
        for sock in inside + outside:
            sock.close()


@pytest.mark.netadmin
def test_a_count_above_the_ceiling_is_rejected_whole_in_the_pods_namespace(served_pod):
    uid, netns = served_pod
    inside = connect(POD_IP, PORT, 4, netns=netns)
    node = NodeAgent(
        node="node-a", strategies=[CgroupStrategy()],
        policies=Policies({("teleport", "auth"): NODE_SPEC}), max_fraction=0.5,
    )  # fmt: skip

    async def scenario() -> dict[str, Any]:
        await node.update(pod(uid=uid, drain=request("too-many", count=3, windowSeconds=0)))
        await asyncio.sleep(0.5)
        try:
            return node.status()
        finally:
            await node.stop()

    try:
        status = run(scenario())
        (answer,) = status["pods"][0]["requests"]
        assert answer["state"] == "rejected"
        assert "exceeds this agent's ceiling of 2" in answer["reason"]
        assert status["pods"][0]["active"] == 4
        assert all(echoes(s) for s in inside)
    finally:
        for sock in inside:
            sock.close()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--node", ""], "--node is required (or NODE_NAME"),
        (["--node", "n", "--netns-from", "cgroup,proc"], "expected a comma-separated list of"),
        (["--node", "n", "--netns-from", "cgroup,cgroup"], "expected a comma-separated list of"),
        (["--node", "n", "--state-dir", "/nonexistent/dir"], "no such directory"),
    ],
)
def test_the_command_line_names_what_is_wrong(argv, says, capsys, monkeypatch):
    from connbalance.cli.main import main

    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["node-agent", *argv]) == 2
    assert says in capsys.readouterr().err


def test_a_file_that_is_no_network_namespace_is_refused_saying_why(tmp_path):
    from connbalance.agent.netns import NamespaceUnavailable, NetworkNamespace

    with pytest.raises(NamespaceUnavailable, match=r"cannot open .*missing: No such file"):
        NetworkNamespace.open(tmp_path / "missing", name="gone")
    (tmp_path / "plain").write_text("")
    with pytest.raises(NamespaceUnavailable, match="cannot enter network namespace p: Invalid"):
        NetworkNamespace.open(tmp_path / "plain", name="p")


@pytest.mark.netadmin
def test_calls_run_inside_the_namespace_entered_and_not_after_it_is_closed():
    import os

    from connbalance.agent.netns import NamespaceUnavailable, NetworkNamespace

    require_tools()
    with network_namespace() as name:
        entered = NetworkNamespace.open(Path("/run/netns") / name, name=name)
        own = NetworkNamespace.own()
        try:
            inode = entered.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino)
            assert inode == os.stat(Path("/run/netns") / name).st_ino
            assert own.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino) == os.stat(
                "/proc/self/ns/net"
            ).st_ino
        finally:
            entered.close()
        with pytest.raises(NamespaceUnavailable, match="is closed"):
            entered.call(os.getpid)
