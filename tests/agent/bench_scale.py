"""``make bench-agent-scale``: the agent at 100,000 sockets (issue 14, item 6). One JSON document.

- **reset scan and selection**: 100,000 established connections held on one server port, then
  the reset-mode agent's own code does what the first close of a request does: the scan that
  lists the sockets a request may cycle (``ResetAgent.connection_ids``: one inet_diag walk of
  both families with tcp_info, the port and the pod's address in kernel bytecode, unpacked a
  chunk at a time), and the choice of the first to close over it (``ResetAgent._choose``).
  Median of ``--repeats``; the count-only dump behind the active-connections gauge is timed
  apart. The agent started before the clients connected, so its nftables table was in
  place while they did, and its refusal element is set while it scans: ``nf_conntrack_count``
  before and after says whether steering made the kernel track the connections.
- **idle CPU**: the real agent process (``connbalance agent --mode reset``, as the recipe runs it:
  the annotations file polled, no API watch) with those sockets present and no request, over
  ``--idle-seconds``; then the CPU one ``/metrics`` scrape costs it (its active-connections gauge
  scans), and the share that makes at a 30 s scrape interval.
- **proxy RSS**: the proxy-mode agent process holding idle connections. A proxy holds two
  descriptors per connection and a process here may hold 20,000, so it holds at most 9,900; its
  RSS is measured at half and at all of them, and 20,000 is the line through those two points
  (the cost per connection is flat by then).

A process may hold at most 20,000 descriptors here, so both sides are spread: the server's
sockets over several processes sharing the port with SO_REUSEPORT, the clients over several
processes, each from its own source address (one has about 28,000 ephemeral ports).

The server and its agent are in a network namespace of the bench's own, the clients in another,
joined by a veth pair (10.80.0.1 the server, 10.80.1.N the clients; the agent's HTTP on the
server namespace's loopback): as on a node, the pod's namespace holds the server's sockets and
not its clients', so the kernel's walk behind a scan visits 100,000 sockets, not 200,000. Both
namespaces go when the bench ends. The proxy-mode figure stays on the machine's loopback.
``--sockets 2000`` makes a tiny run for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.agent.bench import HOST as PROXY_UPSTREAM_HOST
from tests.agent.bench import process, raise_fd_limit, rss_kib, upstream
from tests.agent.netns import inside

SERVER = "10.80.0.1"  # in the server's namespace
AGENT_HTTP = "127.0.80.2"  # on the server namespace's loopback
SOURCES = "10.80.1.{}"  # in the clients' namespace
PER_PROCESS = 14_000  # descriptors a peer process holds, well under the 20,000 cap
MIN_CLIENT_PROCESSES = 4
PROXY_MAX = 9_900  # 2 descriptors per proxied connection, under the 20,000 cap
GOAL_SCAN_MS = 200.0
GOAL_IDLE_CPU_PERCENT = 1.0
GOAL_PROXY_RSS_MIB = 100.0
SCRAPE_INTERVAL_SECONDS = 30.0
CONNECT_TIMEOUT = 600.0
STALL_SECONDS = 20.0
ENOUGH = 0.999


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scale_network(sources: int) -> Iterator[tuple[str, str]]:
    """The server's namespace and the clients', joined by a veth pair: SERVER on one end,
    ``sources`` addresses of SOURCES on the other."""
    server, clients = f"cbscale-srv-{os.getpid()}", f"cbscale-cli-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for name in (server, clients):
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", server, "link", "add", "cbs0", "type", "veth", "peer", "name", "cbc0",
           "netns", clients)  # fmt: skip
        ip("-n", server, "addr", "add", f"{SERVER}/16", "dev", "cbs0")
        for i in range(1, sources + 1):
            ip("-n", clients, "addr", "add", f"{SOURCES.format(i)}/16", "dev", "cbc0")
        for name, dev in ((server, "cbs0"), (clients, "cbc0")):
            ip("-n", name, "link", "set", dev, "up")
        yield server, clients
    finally:
        for name in (server, clients):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conntrack(netns: str) -> dict[str, int | None]:
    """``nf_conntrack_max`` and the namespace's ``nf_conntrack_count``."""

    def read(name: str) -> int | None:
        path = Path("/proc/sys/net/netfilter") / name
        return int(path.read_text()) if path.exists() else None

    def both() -> dict[str, int | None]:
        return {"max": read("nf_conntrack_max"), "count": read("nf_conntrack_count")}

    return inside(netns, both)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peer(netns: str, *args: str) -> contextlib.AbstractContextManager[
        tuple[subprocess.Popen[str], Any]]:
    return process(["ip", "netns", "exec", netns, sys.executable, "-m", "tests.agent.scalepeers",
                    *args], ready=lambda line: line.strip() or None)  # fmt: skip


@contextlib.contextmanager
def established(sockets: int, port: int, network: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """``sockets`` connections held to SERVER:port, both ends spread over processes, the
    servers in the first namespace of ``network`` and the clients in the second."""
    server_ns, client_ns = network
    servers = max(2, math.ceil(sockets / PER_PROCESS))
    clients = client_processes(sockets)
    shares = [sockets // clients + (i < sockets % clients) for i in range(clients)]
    with contextlib.ExitStack() as stack:
        for _ in range(servers):
            stack.enter_context(peer(server_ns, "serve", SERVER, str(port)))
        for i, share in enumerate(shares):
            stack.enter_context(peer(client_ns, "connect", SOURCES.format(i + 1), SERVER,
                                     str(port), str(share)))  # fmt: skip
        yield {
            "sockets": sockets,
            "server_processes": servers,
            "client_processes": clients,
            "source_addresses": [SOURCES.format(i + 1) for i in range(clients)],
        }


def client_processes(sockets: int) -> int:
    return max(MIN_CLIENT_PROCESSES, math.ceil(sockets / PER_PROCESS))


def wait_established(port: int, sockets: int) -> int:
    """Until the kernel lists ``sockets`` established on the port; how many it listed. On a busy
    machine a server process may fall behind on accepts, its queue overflows and the kernel drops
    a handshake's last ACK: the client holds a connection the server never gets. So once the
    count has stood still for STALL_SECONDS at no fewer than ENOUGH of them, that many it is."""
    from connbalance.agent.netlink import SockDiag

    deadline = time.monotonic() + CONNECT_TIMEOUT
    most, still_since = -1, time.monotonic()
    with SockDiag() as diag:
        while (found := diag.count_established(port=port, address=SERVER)) < sockets:
            now = time.monotonic()
            if found > most:  # a dump is not atomic: a count may dip, so the highest counts
                most, still_since = found, now
            elif most >= ENOUGH * sockets and now - still_since >= STALL_SECONDS:
                return most
            if now > deadline:
                raise RuntimeError(f"{found} of {sockets} connections established on {port}")
            time.sleep(0.5)
    return found


def scan_and_select(agent: Any, repeats: int) -> dict[str, Any]:
    """What a request's first close costs, on the agent's own code, ``repeats`` times: the scan
    that lists what the request may cycle (``connection_ids``, as ``submit`` does), and the
    choice of the first to close over that scan (``_choose``, as each close does). Wall time, and
    this thread's CPU time (on a loaded machine, closer to what a quiet one takes). Apart, not in
    the total: ``count``, the active-connections gauge's count-only dump; ``kernel_dump``, the
    scan's dump received and not read, the floor any reader of it pays."""
    names = ("scan", "choose", "count", "kernel_dump")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    seen = 0
    for _ in range(repeats):
        marks = [(time.perf_counter(), time.thread_time())]
        eligible = agent.connection_ids()
        seen = len(eligible)
        marks.append((time.perf_counter(), time.thread_time()))
        if agent._choose(eligible, set(), quiet_seconds=0.2) is None and seen:
            raise RuntimeError("the agent chose nothing among established sockets")
        marks.append((time.perf_counter(), time.thread_time()))
        if agent.active_count() < seen // 2:
            raise RuntimeError("the count-only dump missed half the sockets")
        marks.append((time.perf_counter(), time.thread_time()))
        kernel_dump_only(agent._diag, agent.port, agent.address)
        marks.append((time.perf_counter(), time.thread_time()))
        for i, name in enumerate(names):
            wall[name].append(marks[i + 1][0] - marks[i][0])
            cpu[name].append(marks[i + 1][1] - marks[i][1])
        time.sleep(0.2)

    def total(parts: dict[str, list[float]]) -> list[float]:
        return [scan + choose for scan, choose in zip(parts["scan"], parts["choose"], strict=True)]

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    median_ms, median_cpu_ms = ms(total(wall)), ms(total(cpu))
    return {
        "sockets_seen": seen,
        "repeats": repeats,
        "median_ms": median_ms,
        "min_ms": round(min(total(wall)) * 1000, 1),
        "max_ms": round(max(total(wall)) * 1000, 1),
        "median_ms_by_part": {name: ms(v) for name, v in wall.items()},
        "median_cpu_ms": median_cpu_ms,
        "median_cpu_ms_by_part": {name: ms(v) for name, v in cpu.items()},
        "goal_ms": GOAL_SCAN_MS,
        "meets_goal": median_ms < GOAL_SCAN_MS,
        "meets_goal_in_cpu_time": median_cpu_ms < GOAL_SCAN_MS,
    }


def kernel_dump_only(diag: Any, port: int, address: str) -> int:
    """The dump ``established_rows`` asks for, received and not parsed; bytes received."""
    from connbalance.agent import netlink

    payload = (
        netlink._COMPAT_REQ.pack(socket.AF_UNSPEC, 0, 0, 1 << (netlink.INET_DIAG_INFO - 1))
        + netlink._SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
        + netlink._SOCKID_TAIL.pack(0, b"\0" * 8)
        + netlink._COMPAT_TAIL.pack(1 << netlink.TCP_ESTABLISHED, 0)
        + netlink._local_condition(port, address)
    )
    diag._send(netlink.TCPDIAG_GETSOCK, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
               1 << 30, payload)  # fmt: skip
    received = 0
    while True:
        data = diag._sock.recv(1 << 20)
        received += len(data)
        if struct.unpack_from("=H", data, len(data) - 16)[0] == netlink.NLMSG_DONE:
            return received


def ss_listing(port: int, netns: str) -> dict[str, Any]:
    """``ss`` listing the same sockets (address and port) with tcp_info, for reference: wall
    time, median of 3."""
    times = []
    lines = 0
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tinH", "state",
                               "established", "src", f"{SERVER}:{port}"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        times.append(time.perf_counter() - start)
        lines = sum(1 for line in done.stdout.splitlines() if line[:1] not in (" ", "\t"))
    return {"median_ms": round(statistics.median(times) * 1000, 1), "sockets_listed": lines}


def idle_agent(port: int, idle_seconds: float, run_dir: Path, netns: str) -> dict[str, Any]:
    """The agent process, as the recipe runs it, with the sockets present and nothing to do."""
    annotations = run_dir / "annotations"
    annotations.write_text("")
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "connbalance.agent",
            "--mode", "reset", "--port", str(port),
            "--pod-ip", SERVER, "--listen", f"{AGENT_HTTP}:0", "--annotations-file",
            str(annotations), "--no-api-watch", "--state-file", str(run_dir / "state.json"),
            "--max-fraction", "0.5"]  # fmt: skip

    def ready(line: str) -> int | None:
        found = line.split("HTTP on ", 1)
        return int(found[1].split(",", 1)[0].rsplit(":", 1)[1]) if len(found) == 2 else None

    with process(argv, ready=ready, stream="stderr") as (proc, http_port):
        time.sleep(1.0)
        before, start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle = (cpu_seconds(proc.pid) - before) / (time.monotonic() - start)
        before, start = cpu_seconds(proc.pid), time.perf_counter()
        url = f"http://{AGENT_HTTP}:{http_port}/metrics"
        body = inside(netns, read_metrics, url)
        wall = time.perf_counter() - start
        time.sleep(0.2)
        scrape = cpu_seconds(proc.pid) - before
        rss = rss_kib(proc.pid)
    active = next(float(line.split()[-1]) for line in body.splitlines()
                  if line.startswith("connbalance_agent_active_connections "))  # fmt: skip
    with_scrapes = idle + scrape / SCRAPE_INTERVAL_SECONDS
    return {
        "seconds": idle_seconds,
        "cpu_percent_of_a_core": round(idle * 100, 3),
        "scrape_cpu_ms": round(scrape * 1000, 1),
        "scrape_wall_ms": round(wall * 1000, 1),
        "scrape_active_connections": int(active),
        "cpu_percent_with_a_scrape_every_30s": round(with_scrapes * 100, 3),
        "rss_mib": round(rss / 1024, 1),
        "goal_percent": GOAL_IDLE_CPU_PERCENT,
        "meets_goal": with_scrapes * 100 < GOAL_IDLE_CPU_PERCENT,
    }


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return str(answer.read().decode())


def settled_rss(pid: int) -> int:
    """RSS once it stopped changing for a second (bounded)."""
    last, since = -1, time.monotonic()
    for _ in range(100):
        time.sleep(0.1)
        now = rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
    return rss_kib(pid)


def proxy_rss(connections: int, target: int) -> dict[str, Any]:
    from tests.agent.bench import agent as proxy_agent

    half = connections // 2
    with upstream() as (_server, (echo, _sink)), proxy_agent(echo, "auto") as (proc, front):
        base = settled_rss(proc.pid)
        held = [socket.create_connection((PROXY_UPSTREAM_HOST, front)) for _ in range(half)]
        try:
            at_half = settled_rss(proc.pid)
            held += [socket.create_connection((PROXY_UPSTREAM_HOST, front))
                     for _ in range(connections - half)]  # fmt: skip
            at_full = settled_rss(proc.pid)
        finally:
            for conn in held:
                conn.close()
    per_connection = (at_full - at_half) / max(1, connections - half)
    estimate = (at_full + per_connection * (target - connections)) / 1024
    return {
        "loop": "auto (uvloop when installed, as the agent's default)",
        "connections_held": connections,
        "rss_mib_at_0": round(base / 1024, 1),
        f"rss_mib_at_{half}": round(at_half / 1024, 1),
        f"rss_mib_at_{connections}": round(at_full / 1024, 1),
        "rss_per_connection_kib": round(per_connection, 2),
        "target_connections": target,
        f"rss_mib_at_{target}_estimated": round(estimate, 1),
        "how": f"2 descriptors per connection and a 20,000 cap: measured at {half} and "
        f"{connections}, {target} on the line through them",
        "goal_mib": GOAL_PROXY_RSS_MIB,
        "meets_goal": estimate < GOAL_PROXY_RSS_MIB,
    }


def reset_side(sockets: int, repeats: int, idle_seconds: float) -> dict[str, Any]:
    from connbalance.agent.netns import NetworkNamespace
    from connbalance.agent.reset import ResetAgent

    result: dict[str, Any] = {}
    with scale_network(client_processes(sockets)) as network:
        server_ns = network[0]
        port = inside(server_ns, free_port, SERVER)
        result["conntrack_before"] = conntrack(server_ns)
        namespace = NetworkNamespace.open(Path("/run/netns") / server_ns, name=server_ns)
        agent = ResetAgent(port=port, address=SERVER, max_fraction=0.5, namespace=namespace)
        with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as run_dir:
            runner.run(agent.start())  # its nftables table is in place from here on
            try:
                start = time.monotonic()
                with established(sockets, port, network) as setup:
                    setup["listed_when_established"] = inside(
                        server_ns, wait_established, port, sockets)
                    setup["established_in_seconds"] = round(time.monotonic() - start, 1)
                    setup["network"] = ("a namespace for the server and its agent, another for "
                                        "the clients, a veth pair between them")
                    result["setup"] = setup
                    agent.steer(120.0)  # the refusal element in place while it scans
                    result["conntrack_with_steering_and_sockets"] = conntrack(server_ns)
                    result["reset_scan_and_select"] = scan_and_select(agent, repeats)
                    result["ss_for_reference"] = ss_listing(port, server_ns)
                    runner.run(agent.stop())  # the idle agent below sets its own element
                    result["idle_agent"] = idle_agent(port, idle_seconds, Path(run_dir),
                                                      server_ns)
            finally:
                runner.run(agent.stop())
                namespace.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--proxy-connections", type=int, default=PROXY_MAX)
    parser.add_argument("--proxy-target", type=int, default=20_000)
    args = parser.parse_args(argv)
    if not 0 < args.proxy_connections <= PROXY_MAX:
        parser.error(f"--proxy-connections: from 1 to {PROXY_MAX} (two descriptors each)")
    raise_fd_limit(2 * PROXY_MAX + 100)
    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_average_at_start": load_average(),
            "fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "ephemeral_ports": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
        },
    }
    report["proxy_idle"] = proxy_rss(args.proxy_connections, args.proxy_target)
    report.update(reset_side(args.sockets, args.repeats, args.idle_seconds))
    report["machine"]["load_average_at_end"] = load_average()
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
