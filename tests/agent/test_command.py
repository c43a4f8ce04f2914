"""``python -m connbalance.agent`` as a process: flags, HTTP, the annotations file, restarts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from connbalance.agent.main import run
from connbalance.model import DRAIN_ANNOTATION
from tests.agent.support import deadline_in
from tests.waiting import eventually

HOST = "127.0.4.3"
ROOT = Path(__file__).resolve().parents[2]


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "connbalance.agent", *args]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "POD_NAMESPACE")}
    return {**clean, "PYTHONPATH": str(ROOT / "operator")}


def fails_with(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert run(list(args)) != 0
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--mode", "proxy", "--upstream", "127.0.0.1:1"], "--proxy-listen"),
        (["--mode", "proxy", "--proxy-listen", "127.0.0.1:0"], "--upstream"),
        (
            ["--mode", "proxy", "--upstream", "nonsense", "--proxy-listen", "1.2.3.4:0"],
            "--upstream",
        ),
        (["--mode", "reset"], "--port"),
        (["--mode", "reset", "--port", "70000"], "--port"),
        (["--mode", "reset", "--port", "3025", "--max-fraction", "1.5"], "--max-fraction"),
        (["--mode", "reset", "--port", "3025", "--max-fraction", "0"], "--max-fraction"),
        (["--mode", "reset", "--port", "3025", "--token-file", "/nonexistent/t"], "--token-file"),
        (
            ["--mode", "reset", "--port", "3025", "--state-file", "/nonexistent/s.json"],
            "--state-file",
        ),
        (["--mode", "sideways"], "--mode"),
        (["--mode", "reset", "--port", "3025", "--pod-ip", "pod-a"], "--pod-ip"),
        (
            [
                *("--mode", "proxy", "--upstream", "127.0.0.1:1"),
                *("--proxy-listen", "127.0.0.1:0", "--pod-ip", "10.0.0.7"),
            ],
            "--pod-ip",
        ),
        (["--mode", "reset", "--port", "3025", "--refusal", "auto"], "--refusal"),
        (
            [
                *("--mode", "proxy", "--upstream", "127.0.0.1:1"),
                *("--proxy-listen", "127.0.0.1:0", "--refusal", "goaway"),
            ],
            "--refusal",
        ),
    ],
)
def test_a_bad_flag_is_refused_with_a_message_naming_it(args, flag, capsys):
    assert flag in fails_with(capsys, *args)


def test_a_pod_ip_that_is_no_address_is_refused_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("POD_IP", "not-an-ip")
    assert "POD_IP" in fails_with(capsys, "--mode", "reset", "--port", "3025")


def test_an_unreadable_state_file_stops_the_start_with_a_message_naming_the_flag(tmp_path, capsys):
    state = tmp_path / "state.json"
    state.write_text("{ not json")
    stderr = fails_with(
        capsys,
        "--mode",
        "proxy",
        "--upstream",
        f"{HOST}:1",
        "--proxy-listen",
        f"{HOST}:0",
        "--listen",
        f"{HOST}:0",
        "--state-file",
        str(state),
    )
    assert "--state-file" in stderr


class Running:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proxy_port = 0
        self.http_port = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self._ready.wait(30):
            raise AssertionError("agent did not come up:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"agent up: .*?(?::(\d+) ->.*)?HTTP on [^ ]+:(\d+),", line)
            if match:
                self.proxy_port = int(match.group(1) or 0)
                self.http_port = int(match.group(2))
                self._ready.set()

    def get(self, path: str, *, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://{HOST}:{self.http_port}{path}", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict:
        return json.loads(self.get("/status")[1])


@contextmanager
def running_agent(*args: str, prefix: tuple[str, ...] = ()) -> Iterator[Running]:
    proc = subprocess.Popen(
        [*prefix, *agent_command(*args, "--listen", f"{HOST}:0", "--loop", "asyncio")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env(),
    )
    with proc:
        try:
            agent = Running(proc)
            yield agent
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        agent.reader.join(10)
        assert code == 0, "".join(agent.lines)


@contextmanager
def silent_upstream() -> Iterator[int]:
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


def open_connections(port: int, count: int) -> list[socket.socket]:
    conns = [socket.create_connection((HOST, port), timeout=5) for _ in range(count)]
    for conn in conns:
        conn.settimeout(0.05)
    return conns


def closed(conns: list[socket.socket]) -> int:
    gone = 0
    for conn in conns:
        try:
            gone += conn.recv(1) == b""
        except TimeoutError:
            pass
        except ConnectionResetError:
            gone += 1
    return gone


def write_annotation(path: Path, value: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f'{DRAIN_ANNOTATION}={json.dumps(json.dumps(value))}\nother="x"\n')
    tmp.replace(path)


def wait_until(check, *, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_the_agent_acts_once_on_the_annotations_file_even_across_a_restart(tmp_path):
    annotations = tmp_path / "annotations"
    state = tmp_path / "state.json"
    token = tmp_path / "token"
    token.write_text("tok\n")
    args = [
        "--mode",
        "proxy",
        "--proxy-listen",
        f"{HOST}:0",
        "--annotations-file",
        str(annotations),
        "--state-file",
        str(state),
        "--token-file",
        str(token),
        "--max-fraction",
        "0.5",
    ]
    request = {
        "id": "file-1",
        "count": 2,
        "windowSeconds": 0.5,
        "quietMillis": 50,
        "deadline": deadline_in(60),
    }
    with silent_upstream() as upstream:
        with running_agent(*args, "--upstream", f"{HOST}:{upstream}") as agent:
            assert agent.get("/healthz") == (200, b"ok\n")
            conns = open_connections(agent.proxy_port, 6)
            wait_until(lambda: agent.status()["active"] == 6)
            write_annotation(annotations, request)
            wait_until(
                lambda: (
                    agent.status()["requests"][:1]
                    and agent.status()["requests"][0]["state"] == "done"
                )
            )
            assert agent.status()["requests"][0]["cycled"] == 2
            assert closed(conns) == 2
            metrics = agent.get("/metrics")[1].decode()
            assert 'connbalance_agent_requests_total{result="accepted"} 1.0' in metrics
            for conn in conns:
                conn.close()

        # Put away while the agent restarts: read at start-up, with no client connected yet, the
        # request would be refused for a ceiling of 0, and nothing closed would prove nothing.
        parked = annotations.with_name("parked")
        annotations.rename(parked)
        with running_agent(*args, "--upstream", f"{HOST}:{upstream}") as agent:
            conns = open_connections(agent.proxy_port, 6)
            wait_until(lambda: agent.status()["active"] == 6)
            parked.rename(annotations)
            # Once read, the request is counted; only then does "nothing closed" mean anything.
            wait_until(lambda: sum(requests_counted(agent, r) for r in OUTCOMES) > 0)
            counted = {r: requests_counted(agent, r) for r in OUTCOMES}
            assert counted == {"duplicate": 1, "accepted": 0, "rejected": 0, "invalid": 0}
            assert agent.status()["cycled_total"] == 0
            assert closed(conns) == 0
            for conn in conns:
                conn.close()


OUTCOMES = ("duplicate", "accepted", "rejected", "invalid")


def requests_counted(agent: Running, result: str) -> float:
    metrics = agent.get("/metrics")[1].decode()
    found = re.search(
        rf'^connbalance_agent_requests_total{{result="{result}"}} (\S+)$', metrics, re.M
    )
    assert found is not None, metrics
    return float(found.group(1))


@pytest.mark.netadmin
def test_reset_mode_starts_after_proving_sock_destroy_works(tmp_path):
    with (
        socket.create_server((HOST, 0)) as server,
        running_agent("--mode", "reset", "--port", str(server.getsockname()[1])) as agent,
    ):
        assert agent.get("/healthz") == (200, b"ok\n")
        assert agent.status()["mode"] == "reset"
        assert agent.status()["degraded"] == ""
        assert can_cycle_gauge(agent) == 1
        assert agent.get("/v1/drain")[0] == 405


# setpriv drops NET_ADMIN from the bounding set before the agent starts, as a container whose
# securityContext does not add it would.
WITHOUT_NET_ADMIN = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--")


def can_cycle_gauge(agent: Running) -> float:
    metrics = agent.get("/metrics")[1].decode()
    found = re.search(r"^connbalance_agent_can_cycle (\S+)$", metrics, re.M)
    assert found is not None, metrics
    return float(found.group(1))


@pytest.mark.netadmin
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_reset_mode_without_cap_net_admin_stays_up_saying_why_and_rejects_every_request(tmp_path):
    annotations = tmp_path / "annotations"
    with (
        socket.create_server((HOST, 0)) as server,
        running_agent(
            "--mode", "reset", "--port", str(server.getsockname()[1]), "--pod-ip", HOST,
            "--annotations-file", str(annotations), prefix=WITHOUT_NET_ADMIN,
        ) as agent,
        socket.create_connection((HOST, server.getsockname()[1]), timeout=5) as client,
    ):  # fmt: skip
        held, _ = server.accept()
        code, body = agent.get("/healthz")
        assert code == 200
        assert b"degraded" in body
        assert b"CAP_NET_ADMIN" in body
        status = agent.status()
        assert "CAP_NET_ADMIN" in status["degraded"]
        assert "--mode proxy" in status["degraded"]
        assert status["active"] == 1  # listing needs no capability: it still counts
        assert can_cycle_gauge(agent) == 0
        request = {"id": "no-cap-1", "count": 1, "windowSeconds": 1, "deadline": deadline_in(60)}
        write_annotation(annotations, request)

        def rejected() -> dict | None:
            found = [r for r in agent.status()["requests"] if r["id"] == "no-cap-1"]
            return found[0] if found else None

        seen = eventually(rejected, what="the request is answered")
        assert seen["state"] == "rejected"
        assert "cannot cycle connections" in seen["reason"]
        assert "CAP_NET_ADMIN" in seen["reason"]
        assert requests_counted(agent, "rejected") == 1
        assert requests_counted(agent, "accepted") == 0
        client.settimeout(1.0)
        with pytest.raises(TimeoutError):
            client.recv(1)  # still open: nothing was destroyed
        held.close()
        assert agent.proc.poll() is None
    assert any("staying up, rejecting every drain request" in line for line in agent.lines)
