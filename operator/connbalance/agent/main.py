"""``connbalance agent``: parse the flags, start one mode, the HTTP server and the intakes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from connbalance.agent.engine import DrainEngine
from connbalance.agent.http import AgentServer, server_tls
from connbalance.agent.intake import watch_annotations_file, watch_pod_annotation
from connbalance.agent.proxy import DEFAULT_REFUSAL, REFUSALS, ProxyAgent
from connbalance.agent.reset import ResetAgent
from connbalance.agent.state import StateFileError
from connbalance.model.settings import setting

log = logging.getLogger("connbalance.agent")
# The operator posts to the policy's agent port, so the agent listens there unless told otherwise.
DEFAULT_LISTEN = f"0.0.0.0:{setting('actuation.agentPort').default}"
DEFAULT_MAX_FRACTION = 0.5


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT such as 127.0.0.1:3025, not {text!r}")
    return host, int(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 1 and 65535, not {text!r}")
    return int(text)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address such as 10.0.3.7, not {text!r}"
        ) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most 1, not {text!r}")
    return value


def build_parser(prog: str = "connbalance agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Cycle a bounded share of this pod's client connections when asked.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's flags, for ``connbalance agent`` and ``python -m connbalance.agent``."""
    parser.add_argument(
        "--mode",
        choices=("reset", "proxy"),
        required=True,
        help="reset: destroy idle server sockets (needs CAP_NET_ADMIN); proxy: an L4 proxy "
        "in front of the server that closes connections with FIN",
    )
    parser.add_argument("--port", type=_port, help="reset mode: the server port to cycle")
    parser.add_argument(
        "--pod-ip",
        type=_address,
        help="reset mode: this pod's address (default $POD_IP); only connections to it are "
        "cycled, and steering refuses new ones to it for the window (nftables). Without it, "
        "every connection on the port is a candidate and nothing steers",
    )
    parser.add_argument("--upstream", type=_host_port, help="proxy mode: the server, HOST:PORT")
    parser.add_argument(
        "--proxy-listen", type=_host_port, help="proxy mode: where clients connect, HOST:PORT"
    )
    parser.add_argument(
        "--refusal",
        choices=REFUSALS,
        default=None,
        help=(
            "proxy mode: how a steering agent refuses a new connection: connect (the default: "
            "the listener closes for the window, so the kernel refuses the connect and a "
            "balancer that dials again picks another pod), reset (accept, then reset) or auto "
            "(GOAWAY to a plaintext HTTP/2 client, a reset to any other; grpcio clients with "
            "retries on, their default, can hang on it: see docs/bench.md)"
        ),
    )
    parser.add_argument(
        "--listen",
        type=_host_port,
        default=_host_port(DEFAULT_LISTEN),
        help=f"HTTP: /healthz, /status, /metrics, POST /v1/drain (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="bearer token for POST /v1/drain; without it HTTP intake is off",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serve HTTPS with this PEM certificate (chain), so the token does not cross the "
        "pod network in the clear; needs --tls-key-file",
    )
    parser.add_argument("--tls-key-file", type=Path, help="the PEM key of --tls-cert-file")
    parser.add_argument(
        "--annotations-file", type=Path, help="downward-API annotations file to poll for requests"
    )
    parser.add_argument(
        "--state-file", type=Path, help="where seen request ids are kept (an emptyDir file)"
    )
    parser.add_argument(
        "--max-fraction",
        type=_fraction,
        default=DEFAULT_MAX_FRACTION,
        help="ceiling: a request may cycle at most this share of the open connections "
        f"(default {DEFAULT_MAX_FRACTION}); a larger count is rejected whole",
    )
    parser.add_argument(
        "--no-api-watch",
        action="store_true",
        help="do not watch this pod's annotation through the API even if POD_NAME and "
        "POD_NAMESPACE are set",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto), or the standard one",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Rules across flags; returns the token (empty when HTTP intake is off)."""
    if args.mode == "reset":
        if args.port is None:
            parser.error("--port is required with --mode reset")
        for flag in ("upstream", "proxy_listen"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} only applies to --mode proxy")
        if args.pod_ip is None and os.environ.get("POD_IP"):
            try:
                args.pod_ip = _address(os.environ["POD_IP"])
            except argparse.ArgumentTypeError as exc:
                parser.error(f"POD_IP: {exc}")
    else:
        if args.upstream is None:
            parser.error("--upstream HOST:PORT is required with --mode proxy")
        if args.proxy_listen is None:
            parser.error("--proxy-listen HOST:PORT is required with --mode proxy")
        if args.port is not None:
            parser.error("--port only applies to --mode reset (proxy mode uses --upstream)")
        if args.pod_ip is not None:
            parser.error("--pod-ip only applies to --mode reset (proxy mode uses --upstream)")
    if args.mode != "proxy" and args.refusal is not None:
        parser.error("--refusal only applies to --mode proxy (reset mode refuses in the kernel)")
    token = ""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            parser.error(f"--token-file {args.token_file}: cannot read ({exc.strerror})")
        if not token:
            parser.error(f"--token-file {args.token_file}: the file is empty")
    args.tls = _tls(parser, args)
    if args.state_file is not None and not args.state_file.parent.is_dir():
        parser.error(f"--state-file {args.state_file}: folder {args.state_file.parent} is missing")
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, not {args.log_level!r}")
    return token


def _tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    cert, key = args.tls_cert_file, args.tls_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        parser.error("--tls-cert-file and --tls-key-file go together")
    try:
        return server_tls(cert_file=str(cert), key_file=str(key))
    except ssl.SSLError as exc:  # an OSError too: first
        parser.error(f"--tls-cert-file {cert} / --tls-key-file {key}: not a PEM pair ({exc})")
    except OSError as exc:
        parser.error(f"--tls-cert-file {cert} / --tls-key-file {key}: cannot read ({exc.strerror})")


def run(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        token = _check(parser, args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return serve(args, token=token)


def serve(args: argparse.Namespace, *, token: str) -> int:
    """Run the agent described by parsed ``args`` until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _run_loop(_serve(args, token=token), choice=args.loop)
    except StateFileError as exc:
        print(f"connbalance agent: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"connbalance agent: error: cannot listen ({exc})", file=sys.stderr)
        return 1
    return 0


def _run_loop(main: Coroutine[Any, Any, None], *, choice: str) -> None:
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit(
                    "connbalance agent: error: --loop uvloop: uvloop is not installed"
                ) from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _make_agent(args: argparse.Namespace) -> DrainEngine:
    if args.mode == "reset":
        return ResetAgent(
            port=args.port,
            address=args.pod_ip,
            max_fraction=args.max_fraction,
            state_file=args.state_file,
            # Up but rejecting requests, rather than exited: an exited sidecar makes its pod
            # unready, and a crash loop would keep it so (docs/teleport.md).
            stay_up_if_unable=True,
        )
    return ProxyAgent(
        listen=args.proxy_listen,
        upstream=args.upstream,
        max_fraction=args.max_fraction,
        state_file=args.state_file,
        refusal=args.refusal or DEFAULT_REFUSAL,
    )


async def _serve(args: argparse.Namespace, *, token: str) -> None:
    agent = _make_agent(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    server = AgentServer(
        agent, host=args.listen[0], port=args.listen[1], token=token or None, ssl_context=args.tls
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await server.start()
        if args.annotations_file is not None:
            tasks.append(
                asyncio.create_task(
                    watch_annotations_file(path=args.annotations_file, engine=agent, stop=stop)
                )
            )
        pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if pod and namespace and not args.no_api_watch:
            tasks.append(
                asyncio.create_task(
                    watch_pod_annotation(namespace=namespace, name=pod, engine=agent, stop=stop)
                )
            )
        where = (
            f"{args.proxy_listen[0]}:{agent.port} -> {args.upstream[0]}:{args.upstream[1]}"
            if isinstance(agent, ProxyAgent)
            else f"port {args.port} on {args.pod_ip or 'every address'}"
        )
        log.info(
            "agent up: mode %s, %s, %s on %s:%d, max fraction %g, HTTP intake %s",
            args.mode,
            where,
            "HTTPS" if args.tls is not None else "HTTP",
            args.listen[0],
            server.port,
            args.max_fraction,
            "on" if token else "off",
        )
        await stop.wait()
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        await server.stop()
        await agent.stop()
