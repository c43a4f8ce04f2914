"""Finding a pod's network namespace: the cgroup strategy against a small /proc tree, the CRI
strategy against small runtime answers.

A real kubelet's cgroups and a real container runtime cannot run here, so these two are the one
fake of the node agent's tests: a folder shaped like /proc (``<pid>/cgroup``, ``<pid>/ns/net``),
and a function that answers crictl's command lines with JSON shaped like containerd's. Entering
a namespace for real is in test_node_agent.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from connbalance.agent.podns import (
    CgroupStrategy,
    CriStrategy,
    Found,
    HostStrategy,
    NamespaceNotFound,
    PodRef,
    find_namespace,
    pod_uid_in,
)

UID = "0b6e6d1c-2f44-4c1e-9a57-3f1d2f7a9c10"
OTHER = "7d2a9f10-1c3b-4e5d-8f60-a1b2c3d4e5f6"
POD = PodRef(uid=UID, namespace="teleport", name="teleport-auth-0")

CGROUPFS_V1 = f"""12:pids:/kubepods/burstable/pod{UID}/3f0c1d
11:memory:/kubepods/burstable/pod{UID}/3f0c1d
0::/
"""
SYSTEMD_V1 = (
    "4:memory:/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-9a1b.scope\n"
)
SYSTEMD_V2 = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-77aa.scope\n"
)
GUARANTEED = f"0::/kubepods/pod{UID}/c0ffee\n"
NOT_A_POD = "0::/system.slice/containerd.service\n"


def proc_tree(root: Path, processes: dict[int, str], *, without_ns: Sequence[int] = ()) -> Path:
    """A /proc of ``pid: cgroup file`` entries, each with an ns/net file unless listed."""
    (root / "self").mkdir(parents=True)
    (root / "uptime").write_text("1.0 1.0\n")
    for pid, cgroup in processes.items():
        (root / str(pid) / "ns").mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(cgroup)
        if pid not in without_ns:
            (root / str(pid) / "ns" / "net").write_text("")
    return root


@pytest.mark.parametrize(
    ("text", "uid"),
    [
        (CGROUPFS_V1, UID),
        (SYSTEMD_V1, UID),
        (SYSTEMD_V2, UID),
        (GUARANTEED, UID),
        (NOT_A_POD, None),
        ("0::/kubepods/burstable/podnot-a-uid/x\n", None),
    ],
    ids=["cgroupfs-v1", "systemd-v1", "systemd-v2", "guaranteed", "no-pod", "malformed"],
)
def test_a_cgroup_file_names_the_pod_uid_with_dashes_or_underscores(text, uid):
    assert pod_uid_in(text) == uid


def test_the_cgroup_strategy_finds_the_pods_lowest_pid_and_its_namespace_file(tmp_path):
    proc = proc_tree(
        tmp_path / "proc",
        {1: NOT_A_POD, 4100: SYSTEMD_V2, 812: SYSTEMD_V2, 900: f"0::/kubepods/pod{OTHER}/x\n"},
    )
    found = CgroupStrategy(proc=proc).find(POD)
    net = proc / "812" / "ns" / "net"
    assert found == Found(path=net, source="cgroup", detail="pid 812", pid=812)


def test_the_cgroup_strategy_skips_a_process_whose_namespace_cannot_be_seen(tmp_path):
    proc = proc_tree(tmp_path / "proc", {300: CGROUPFS_V1, 301: CGROUPFS_V1}, without_ns=[300])
    found = CgroupStrategy(proc=proc).find(POD)
    assert isinstance(found, Found)
    assert found.pid == 301


def test_the_cgroup_strategy_says_why_when_no_process_is_in_the_pod(tmp_path):
    proc = proc_tree(tmp_path / "proc", {1: NOT_A_POD, 77: f"0::/kubepods/pod{OTHER}/x\n"})
    answer = CgroupStrategy(proc=proc).find(POD)
    assert answer == f"no process under {proc} is in a cgroup of pod uid {UID}"


def test_a_pid_reused_by_another_process_after_it_was_found_is_not_the_pods_any_more(tmp_path):
    proc = proc_tree(tmp_path / "proc", {812: SYSTEMD_V2})
    strategy = CgroupStrategy(proc=proc)
    found = strategy.find(POD)
    assert isinstance(found, Found)
    assert strategy.still(POD, found)
    (proc / "812" / "cgroup").write_text(NOT_A_POD)  # the pod's process died; another took 812
    assert not strategy.still(POD, found)
    (proc / "812" / "cgroup").unlink()
    assert not strategy.still(POD, found)


# --- CRI: answers shaped like `crictl pods -o json` and `crictl inspectp -o json` (containerd) ---

SANDBOX = "5c8e2b71d0a94f3e9d1c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e"


def pods_answer(*uids: str) -> str:
    items = [
        {"id": SANDBOX if i == 0 else f"{i:064x}", "metadata": {"name": "teleport-auth-0",
         "namespace": "teleport", "uid": uid, "attempt": 0}, "state": "SANDBOX_READY"}
        for i, uid in enumerate(uids)
    ]  # fmt: skip
    return json.dumps({"items": items})


def inspect_answer(*, network: str = "POD", pid: int | None = 4242, path: str = "") -> str:
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    namespaces.append({"type": "network", **({"path": path} if path else {})})
    info: dict[str, object] = {
        "processStatus": "running", "netNamespaceClosed": False,
        "image": "registry.k8s.io/pause:3.10",
        "runtimeSpec": {"linux": {"namespaces": namespaces}},
    }  # fmt: skip
    if pid is not None:
        info["pid"] = pid
    status = {
        "id": SANDBOX, "state": "SANDBOX_READY", "network": {"ip": "10.244.1.7"},
        "linux": {"namespaces": {"options": {"network": network, "pid": "CONTAINER"}}},
    }  # fmt: skip
    return json.dumps({"status": status, "info": info})


class Runtime:
    """crictl's command lines and the answers given, in order."""

    def __init__(self, answers: dict[str, str | Exception]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.asked.append(list(argv))
        answer = self.answers[next(a for a in argv if a in ("pods", "inspectp"))]
        if isinstance(answer, Exception):
            raise answer
        return answer


def cri(runtime: Runtime, proc: Path = Path("/proc")) -> CriStrategy:
    crictl = ("crictl", "--runtime-endpoint", "unix:///run/containerd/containerd.sock")
    return CriStrategy(crictl=crictl, run=runtime, proc=proc)


def test_the_cri_strategy_asks_for_the_pods_ready_sandbox_then_inspects_it_flags_first():
    runtime = Runtime({"pods": pods_answer(UID), "inspectp": inspect_answer(pid=4242)})
    found = cri(runtime).find(POD)
    assert found == Found(
        path=Path("/proc/4242/ns/net"), source="cri",
        detail=f"sandbox {SANDBOX[:13]}, pid 4242",
    )  # fmt: skip
    endpoint = ["crictl", "--runtime-endpoint", "unix:///run/containerd/containerd.sock"]
    assert runtime.asked == [
        [*endpoint, "pods", "-o", "json", "--label", f"io.kubernetes.pod.uid={UID}", "--state",
         "ready"],
        [*endpoint, "inspectp", "-o", "json", SANDBOX],
    ]  # fmt: skip


def test_without_a_pid_the_cri_strategy_takes_the_namespace_path_of_the_runtime_spec():
    path = "/var/run/netns/cni-1f0e7a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b"
    runtime = Runtime({"pods": pods_answer(UID), "inspectp": inspect_answer(pid=None, path=path)})
    found = cri(runtime).find(POD)
    assert isinstance(found, Found)
    assert found.path == Path(path)


def test_a_sandbox_on_the_nodes_network_is_served_in_the_nodes_namespace():
    runtime = Runtime({"pods": pods_answer(UID), "inspectp": inspect_answer(network="NODE")})
    found = cri(runtime).find(POD)
    assert isinstance(found, Found)
    assert found.path is None


def test_a_sandbox_listed_for_another_uid_is_not_taken():
    runtime = Runtime({"pods": pods_answer(OTHER), "inspectp": inspect_answer()})
    assert cri(runtime).find(POD) == f"the runtime has no ready sandbox for pod uid {UID}"
    assert [argv[3] for argv in runtime.asked] == ["pods"]


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ({"pods": OSError("connect: no such file or directory")}, "crictl: connect: no such"),
        ({"pods": "not json"}, "crictl: Expecting value"),
        ({"pods": pods_answer(UID), "inspectp": "[]"}, "inspectp: the answer is not a JSON"),
        (
            {"pods": pods_answer(UID), "inspectp": inspect_answer(pid=None)},
            "names neither a pid nor a network namespace",
        ),
    ],
    ids=["runtime-away", "garbled", "not-an-object", "no-namespace"],
)
def test_the_cri_strategy_says_what_went_wrong_instead_of_raising(answers, says):
    answer = cri(Runtime(answers)).find(POD)
    assert isinstance(answer, str)
    assert says in answer


def test_strategies_are_tried_in_order_and_every_reason_is_given_when_none_finds(tmp_path):
    proc = proc_tree(tmp_path / "proc", {1: NOT_A_POD})
    runtime = Runtime({"pods": pods_answer(UID), "inspectp": inspect_answer(pid=99)})
    found, used = find_namespace(POD, [CgroupStrategy(proc=proc), cri(runtime, proc)])
    assert (found.source, found.path, used.name if used else None) == (
        "cri", proc / "99" / "ns" / "net", "cri",
    )  # fmt: skip
    with pytest.raises(NamespaceNotFound) as raised:
        find_namespace(POD, [CgroupStrategy(proc=proc), cri(Runtime({"pods": pods_answer()}))])
    assert str(raised.value) == (
        f"pod teleport/teleport-auth-0: no network namespace found (cgroup: no process under "
        f"{proc} is in a cgroup of pod uid {UID}; cri: the runtime has no ready sandbox for pod "
        f"uid {UID})"
    )


def test_a_host_network_pod_is_served_in_the_nodes_namespace_without_asking_anyone(tmp_path):
    def never(argv: Sequence[str]) -> str:
        raise AssertionError(f"asked {argv}")

    pod = PodRef(uid=UID, namespace="kube-system", name="proxy", host_network=True)
    found, used = find_namespace(pod, [CriStrategy(run=never), HostStrategy()])
    assert (found.path, found.source, used) == (None, "hostNetwork", None)
