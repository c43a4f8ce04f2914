"""``connbalance node-agent``: serve the drain requests of every pod on this node, from outside.

Runs as a DaemonSet: ``hostPID`` (to find pods' processes and read their namespaces) and
``hostNetwork`` (so ``hostNetwork`` pods are served in its own namespace), with the capabilities
NET_ADMIN (SOCK_DESTROY and nftables in the pods' namespaces), SYS_ADMIN (setns) and SYS_PTRACE
(open other users' ``/proc/<pid>/ns/net``), and nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from connbalance.agent.intake import _default_api_client
from connbalance.agent.main import _fraction, _host_port, _run_loop
from connbalance.agent.node import NodeAgent
from connbalance.agent.nodeapi import KubePolicies, NodePodWatch, follow
from connbalance.agent.nodehttp import NodeAgentServer
from connbalance.agent.podns import PROC, STRATEGIES, make_strategies
from connbalance.agent.reset import ResetUnavailable, check_sock_destroy

log = logging.getLogger("connbalance.node_agent")
DEFAULT_LISTEN = "0.0.0.0:9096"
DEFAULT_MAX_FRACTION = 0.5
DEFAULT_NETNS_FROM = "cgroup,cri"


def _strategies(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(STRATEGIES)}, not {text!r}"
        )
    return names


def build_parser(prog: str = "connbalance node-agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Cycle a bounded share of client connections of the pods on this node, "
        "in each pod's own network namespace, when their ConnectionBalancer asks.",
    )
    add = parser.add_argument
    add(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default $NODE_NAME): only pods bound to it are served",
    )
    add(
        "--netns-from",
        type=_strategies,
        default=_strategies(DEFAULT_NETNS_FROM),
        help="how to find a pod's network namespace, tried in order: cgroup (/proc/*/cgroup "
        "naming the pod's uid), cri (crictl inspectp of its sandbox), host (the node's own, "
        "filtered by the pod's address; hostNetwork pods always are). "
        f"Default {DEFAULT_NETNS_FROM}",
    )
    add("--proc", type=Path, default=PROC, help=f"the node's /proc (default {PROC})")
    add("--crictl", default="crictl", help="the crictl command, for --netns-from cri")
    add(
        "--runtime-endpoint",
        help="the CRI socket crictl talks to (e.g. unix:///run/containerd/containerd.sock)",
    )
    add(
        "--listen",
        type=_host_port,
        default=_host_port(DEFAULT_LISTEN),
        help=f"HTTP: /healthz, /status, /metrics, /v1/pods/NS/NAME (default {DEFAULT_LISTEN})",
    )
    add(
        "--state-dir",
        type=Path,
        help="where each pod's seen request ids are kept, one file per pod uid (a hostPath "
        "directory, so a new node agent pod never acts on an id twice)",
    )
    add(
        "--max-fraction",
        type=_fraction,
        default=DEFAULT_MAX_FRACTION,
        help="ceiling: a request may cycle at most this share of a pod's open connections "
        f"(default {DEFAULT_MAX_FRACTION}); a larger count is rejected whole",
    )
    add(
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="serve only pods in this namespace (repeat for more); default every namespace",
    )
    add(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto), or the standard one",
    )
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser  # fmt: skip


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.node:
        parser.error("--node is required (or NODE_NAME from the downward API, spec.nodeName)")
    if args.state_dir is not None and not args.state_dir.is_dir():
        parser.error(f"--state-dir {args.state_dir}: no such directory")
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, not {args.log_level!r}")


def run(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check(parser, args)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_sock_destroy()
        _run_loop(_serve(args), choice=args.loop)
    except ResetUnavailable as exc:
        print(f"connbalance node-agent: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"connbalance node-agent: error: cannot listen ({exc})", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    crictl = [args.crictl]
    if args.runtime_endpoint:
        crictl += ["--runtime-endpoint", args.runtime_endpoint]
    api_client = _default_api_client()
    agent = NodeAgent(
        node=args.node,
        strategies=make_strategies(args.netns_from, proc=args.proc, crictl=crictl),
        policies=KubePolicies(api_client=api_client),
        max_fraction=args.max_fraction,
        state_dir=args.state_dir,
        namespaces=args.namespaces,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = NodeAgentServer(agent, host=args.listen[0], port=args.listen[1])
    watch = NodePodWatch(node=args.node, api_client=api_client, loop=loop)
    await server.start()
    watch.start()
    following = asyncio.create_task(follow(agent, watch.events, stop=stop))
    log.info(
        "node agent up: node %s, namespaces from %s, HTTP on %s:%d, max fraction %g, %s",
        args.node, ",".join(args.netns_from), args.listen[0], server.port, args.max_fraction,
        f"namespaces {', '.join(args.namespaces)}" if args.namespaces else "every namespace",
    )  # fmt: skip
    try:
        await stop.wait()
    finally:
        stop.set()
        watch.halt()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(following, 5)
        await server.stop()
        await agent.stop()
        api_client.close()


__all__ = ["build_parser", "run"]
