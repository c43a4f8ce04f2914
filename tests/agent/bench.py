"""``make bench-agent``: proxy-mode cost against direct connections and HAProxy; reset-scan cost.

Prints one JSON document. Every path carries the same traffic from this process:
- latency: one connection, 64-byte request/response round trips, p50 and p99;
- throughput: one connection, a bulk upload to a sink that counts the bytes;
- memory: resident set of the middle process holding 10,000 idle connections (for "direct",
  the upstream server itself, the least any process holding them needs);
- reset scan: one inet_diag listing of 10,000 established sockets on a port, through this
  agent's raw netlink code, pyroute2, and ``ss``.
The agent runs as ``python -m connbalance.agent --mode proxy`` on the standard asyncio loop and
on uvloop; HAProxy (Debian's) runs in TCP mode with one thread, like the agent. Loopback only
(127.0.4.10); every loop below is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.4.10"
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3
ROUND_TRIPS = 10_000
WARMUP = 1_000
BULK_BYTES = 256 * 1024 * 1024
CHUNK = 256 * 1024
# A proxy holding N client connections holds 2N sockets. This sandbox caps descriptors at 20,000
# per process (RLIMIT_NOFILE, no CAP_SYS_RESOURCE to raise it), so the proxies hold 9,900 and the
# report adds the linear estimate for 10,000 from the measured cost per connection.
IDLE_CONNECTIONS = 9_900
SCAN_SOCKETS = 10_000
SCAN_REPEATS = 5
START_TIMEOUT = 30.0


def raise_fd_limit(wanted: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, hard), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator")])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def process(
    argv: list[str], *, ready: Callable[[str], Any], stream: str = "stdout"
) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """Start ``argv``, read lines from ``stream`` until ``ready(line)`` returns a value."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=ROOT,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    found: list[Any] = []
    seen: list[str] = []

    def read() -> None:
        for line in pipe:
            seen.append(line)
            if not found:
                value = ready(line)
                if value is not None:
                    found.append(value)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not found and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not found:
            raise RuntimeError(f"{argv[0]} did not start: {''.join(seen)[-2000:]}")
        yield proc, found[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe_ in (proc.stdin, proc.stdout, proc.stderr):
            if pipe_ is not None:
                with contextlib.suppress(OSError):
                    pipe_.close()


def upstream() -> contextlib.AbstractContextManager[tuple[subprocess.Popen[str], Any]]:
    return process(
        [sys.executable, "-m", "tests.agent.benchserver", HOST],
        ready=lambda line: tuple(int(p) for p in line.split()) if line.strip() else None,
    )


def agent(
    upstream_port: int, loop: str
) -> contextlib.AbstractContextManager[tuple[subprocess.Popen[str], Any]]:
    def ready(line: str) -> int | None:
        match = re.search(r"agent up: .*?:(\d+) ->", line)
        return int(match.group(1)) if match else None

    return process(
        [
            sys.executable,
            "-m",
            "connbalance.agent",
            "--mode",
            "proxy",
            "--upstream",
            f"{HOST}:{upstream_port}",
            "--proxy-listen",
            f"{HOST}:0",
            "--listen",
            f"{HOST}:0",
            "--max-fraction",
            "1",
            "--loop",
            loop,
            "--log-level",
            "INFO",
        ],
        ready=ready,
        stream="stderr",
    )


@contextlib.contextmanager
def haproxy(echo: int, sink: int) -> Iterator[tuple[subprocess.Popen[str], tuple[int, int]]]:
    front = (free_port(), free_port())
    config = f"""
global
    maxconn 9950
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen echo
    bind {HOST}:{front[0]}
    server s {HOST}:{echo}
listen sink
    bind {HOST}:{front[1]}
    server s {HOST}:{sink}
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "haproxy.cfg"
        path.write_text(config)

        def listening(_line: str) -> bool | None:
            return None

        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection((HOST, front[0]), 1):
                    break
                time.sleep(0.05)
            yield proc, front
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def latency(port: int) -> dict[str, float]:
    payload = b"x" * 64
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples: list[int] = []
        for i in range(WARMUP + ROUND_TRIPS):
            start = time.perf_counter_ns()
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(sock.recv(4096))
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
    }


def throughput(port: int) -> float:
    chunk = b"\0" * CHUNK
    with socket.create_connection((HOST, port)) as sock:
        start = time.perf_counter()
        for _ in range(BULK_BYTES // CHUNK):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(64)
            if not data:
                break
            answer += data
        elapsed = time.perf_counter() - start
    if int(answer) != BULK_BYTES:
        raise RuntimeError(f"sink counted {answer!r}, sent {BULK_BYTES}")
    return BULK_BYTES / elapsed / 1e6


def idle_rss(port: int, pid: int) -> dict[str, float]:
    before = rss_kib(pid)
    conns: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            conns.append(socket.create_connection((HOST, port)))
        # Let the middle process accept and connect onwards; RSS settles within a second or two.
        last, stable_since = -1, time.monotonic()
        for _ in range(100):
            time.sleep(0.1)
            now = rss_kib(pid)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
        after = rss_kib(pid)
    finally:
        for conn in conns:
            conn.close()
    per_connection = (after - before) / IDLE_CONNECTIONS
    return {
        "rss_mib": round(after / 1024, 1),
        "rss_per_connection_kib": round(per_connection, 2),
        "rss_10k_mib": round((before + per_connection * 10_000) / 1024, 1),
    }


def measure_paths(fronts: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, Any]]:
    """Latency and throughput in interleaved rounds (medians), then memory one path at a time.

    Interleaving spreads whatever else the machine is doing evenly over the paths compared.
    """
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in fronts}
    for _ in range(ROUNDS):
        for name, (echo, sink, _pid) in fronts.items():
            sample = latency(echo)
            sample["throughput_mb_s"] = throughput(sink)
            rounds[name].append(sample)
    result: dict[str, dict[str, Any]] = {}
    for name, (echo, _sink, pid) in fronts.items():
        merged: dict[str, Any] = {
            key: round(statistics.median(r[key] for r in rounds[name]), 2)
            for key in rounds[name][0]
        }
        merged.update(idle_rss(echo, pid))
        result[name] = merged
    return result


def scans(port: int) -> dict[str, Any]:
    from pyroute2 import DiagSocket

    from connbalance.agent.netlink import INET_DIAG_INFO, TCP_ESTABLISHED, SockDiag

    def timed(fn: Callable[[], int]) -> dict[str, float]:
        runs = []
        count = 0
        for _ in range(SCAN_REPEATS):
            start = time.perf_counter()
            count = fn()
            runs.append(time.perf_counter() - start)
        return {"ms": round(statistics.median(runs) * 1000, 2), "sockets": count}

    def raw() -> int:
        with SockDiag() as diag:
            return len(diag.established(port=port))

    def pyroute2() -> int:
        with DiagSocket() as diag:
            diag.bind()
            found = 0
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in diag.get_sock_stats(
                    family=family,
                    states=1 << TCP_ESTABLISHED,
                    extensions=1 << (INET_DIAG_INFO - 1),
                ):
                    found += msg["idiag_sport"] == port
            return found

    def ss() -> int:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(1 for line in out.splitlines() if line and not line[0].isspace())

    return {"raw_netlink": timed(raw), "pyroute2": timed(pyroute2), "ss": timed(ss)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def main() -> int:
    raise_fd_limit(2 * IDLE_CONNECTIONS + 1_000)
    if shutil.which("haproxy") is None:
        print("bench-agent needs haproxy (make system-deps installs it)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "setup": {
            "rounds": ROUNDS,
            "round_trips_per_round": ROUND_TRIPS,
            "bulk_mib": BULK_BYTES >> 20,
            "idle_connections": IDLE_CONNECTIONS,
            "haproxy_threads": 1,
        },
    }
    with contextlib.ExitStack() as stack:
        server, (echo, sink) = stack.enter_context(upstream())
        fronts: dict[str, tuple[int, int, int]] = {"direct": (echo, sink, server.pid)}
        proc, (h_echo, h_sink) = stack.enter_context(haproxy(echo, sink))
        fronts["haproxy"] = (h_echo, h_sink, proc.pid)
        for loop in ("asyncio", "uvloop"):
            proc, a_echo = stack.enter_context(agent(echo, loop))
            _, a_sink = stack.enter_context(agent(sink, loop))
            fronts[f"agent_{loop}"] = (a_echo, a_sink, proc.pid)
        paths = measure_paths(fronts)
        held = [socket.create_connection((HOST, echo)) for _ in range(SCAN_SOCKETS)]
        try:
            time.sleep(1.0)
            report["reset_scan_10k"] = scans(echo)
        finally:
            for conn in held:
                conn.close()
    report["proxy"] = paths
    ratios: dict[str, dict[str, float]] = {}
    for name in ("agent_asyncio", "agent_uvloop"):
        mine = paths[name]
        ratios[name] = {
            "p50_vs_direct": ratio(mine["p50_us"], paths["direct"]["p50_us"]),
            "p50_vs_haproxy": ratio(mine["p50_us"], paths["haproxy"]["p50_us"]),
            "p99_vs_direct": ratio(mine["p99_us"], paths["direct"]["p99_us"]),
            "p99_vs_haproxy": ratio(mine["p99_us"], paths["haproxy"]["p99_us"]),
            "throughput_vs_direct": ratio(
                mine["throughput_mb_s"], paths["direct"]["throughput_mb_s"]
            ),
            "throughput_vs_haproxy": ratio(
                mine["throughput_mb_s"], paths["haproxy"]["throughput_mb_s"]
            ),
            "rss_vs_direct": ratio(mine["rss_10k_mib"], paths["direct"]["rss_10k_mib"]),
            "rss_vs_haproxy": ratio(mine["rss_10k_mib"], paths["haproxy"]["rss_10k_mib"]),
        }
    scan = report["reset_scan_10k"]
    ratios["reset_scan"] = {
        "raw_netlink_vs_ss": ratio(scan["raw_netlink"]["ms"], scan["ss"]["ms"]),
        "raw_netlink_vs_pyroute2": ratio(scan["raw_netlink"]["ms"], scan["pyroute2"]["ms"]),
    }
    report["ratios"] = ratios
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
