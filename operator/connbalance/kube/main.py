"""``connbalance run``: the operator. Watches ConnectionBalancer resources in the namespaces
given (or all), with the pods and workloads they select, and reconciles each when something
changes or when its controller asked to look again. With POD_NAMESPACE set (the chart sets it),
replicas elect one leader through a Lease there; only the leader acts."""

from __future__ import annotations

import argparse
import os
import sys

from connbalance.kube.logs import FORMATS, configure
from connbalance.kube.wiring import DEFAULT_PROMETHEUS_URL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connbalance run", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="watch every namespace (the default when none is given)",
    )
    parser.add_argument(
        "--kubeconfig",
        help="a kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (default %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve the operator's Prometheus metrics here (default: off)",
    )
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="text or json lines (default %(default)s)")
    parser.add_argument(
        "--default-prometheus-url",
        default=DEFAULT_PROMETHEUS_URL,
        help="for ConnectionBalancers that name no spec.metrics.prometheus.url "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--node-agent-port",
        type=_node_agent_port,
        default=0,
        metavar="PORT",
        help="the node agent's HTTP port on each node's address, where balancers with "
        "actuation.agent node read what it did (default 0: no node agent; status says "
        "unconfirmed)",
    )
    parser.add_argument(
        "--leader-election",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: on when POD_NAMESPACE is set, where the Lease lives (default %(default)s)",
    )
    parser.add_argument("--lease-namespace", help="the Lease's namespace (default POD_NAMESPACE)")
    parser.add_argument("--lease-name", default="connbalance-leader",
                        help="the Lease's name (default %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def _node_agent_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"want a port from 0 to 65535, not {text!r}")
    return int(text)


def _lease_namespace(args: argparse.Namespace) -> str | None:
    """Where the Lease lives, or None without election. Raises ValueError naming the flag."""
    namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or None
    if args.leader_election == "off":
        return None
    if args.leader_election == "on" and namespace is None:
        raise ValueError("--leader-election on: needs --lease-namespace or POD_NAMESPACE")
    return namespace


def run(argv: list[str]) -> int:
    # Here, as kopf below: the CLI imports this module for every subcommand, and the kubernetes
    # client alone takes most of a second to import, which `connbalance agent` should not pay.
    args = build_parser().parse_args(argv)
    if args.kubeconfig:
        # kopf logs in on its own, through the client's default kubeconfig, which the client
        # reads from the environment when it is first imported: point it there first.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from kubernetes import config

    configure(log_format=args.log_format, verbose=args.verbose)
    try:
        lease_namespace = _lease_namespace(args)
    except ValueError as exc:
        print(f"connbalance run: {exc}", file=sys.stderr)
        return 2
    try:
        if args.kubeconfig:
            config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as exc:
        print(
            f"connbalance run: --kubeconfig: cannot load a Kubernetes config: {exc}",
            file=sys.stderr,
        )
        return 2
    import kopf

    from connbalance.kube import handlers

    if args.metrics:
        host, _, port = args.metrics.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            print(
                f"connbalance run: --metrics: want HOST:PORT, not {args.metrics!r}", file=sys.stderr
            )
            return 2
        handlers.OPTIONS.metrics = (host, int(port))
    handlers.OPTIONS.default_prometheus_url = args.default_prometheus_url
    handlers.OPTIONS.lease_namespace = lease_namespace
    handlers.OPTIONS.lease_name = args.lease_name
    handlers.OPTIONS.node_agent_port = args.node_agent_port
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
