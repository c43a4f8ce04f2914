"""``connbalance run``: the operator. Watches ConnectionBalancer resources in the namespaces
given (or all) and reconciles each on a timer."""

from __future__ import annotations

import argparse
import logging
import sys


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
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run(argv: list[str]) -> int:
    # Here, as kopf below: the CLI imports this module for every subcommand, and the kubernetes
    # client alone takes most of a second to import, which `connbalance agent` should not pay.
    from kubernetes import config

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    from prometheus_client import start_http_server

    from connbalance.kube import handlers
    from connbalance.kube.metrics import REGISTRY

    if args.metrics:
        host, _, port = args.metrics.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            print(
                f"connbalance run: --metrics: want HOST:PORT, not {args.metrics!r}", file=sys.stderr
            )
            return 2
        start_http_server(int(port), addr=host, registry=REGISTRY)

    del handlers  # imported for its registrations
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
