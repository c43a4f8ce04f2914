"""The live form of ``connbalance plan``: loads from Prometheus, readiness from the API server.

``connbalance plan --prometheus URL --namespace NS --selector k=v[,k=v] [--preset teleport-auth]
[--kubeconfig PATH]``. With a kubeconfig the pool is the pods the selector picks, as the API server
reports them (Ready, and since when); without, it is every pod the query returns, all taken as
Ready long enough to be settled, and the selector is matched against the pods' labels as
Prometheus's ``labelmap`` convention copies them onto the metrics. Flags override the metrics
settings of ``--policy``. Exit 2 for a bad flag (naming it), 3 when Prometheus or the API server
cannot give a trustworthy answer (one line naming the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from connbalance.cli.errors import EXIT_UNAVAILABLE, CliError
from connbalance.model import MetricsSpec, PodLoad, PodName, PodState, Policy
from connbalance.ports import FleetError, MetricsEmpty, MetricsError
from connbalance.prometheus import PRESETS, PrometheusLoadSource

# Without a kubeconfig nothing says when pods became Ready: date it before any settle time.
_SETTLED_MARGIN = 60.0
# Which flag a settings error is about, by what its message names.
_FLAG_FOR = (
    ("URL", "--prometheus"),
    ("bearer token", "--bearer-token-file"),
    ("bearerTokenSecret", "--bearer-token-file"),
    ("CA bundle", "--ca-file"),
    ("caSecret", "--ca-file"),
    ("insecure", "--insecure-skip-verify"),
    ("header", "--header"),
    ("timeout", "--timeout"),
    ("maxStaleness", "--max-staleness"),
    ("selector", "--selector"),
    ("pod label", "--pod-label"),
    ("namespace", "--namespace"),
    ("preset", "--preset"),
    ("query", "--query"),
)


class LiveError(CliError):
    """``exit_code`` 3 for Prometheus or API server failures, 2 for bad flags."""


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """What the planner needs. ``policy`` is the one to plan with: the given policy with the
    flags' metrics settings (``--max-staleness`` among them) applied."""

    loads: Mapping[PodName, PodLoad]
    pods: tuple[PodState, ...]
    now: float
    policy: Policy | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = parser.add_argument_group(
        "live", "read the pool from Prometheus (and the API server) instead of --loads"
    )
    live.add_argument("--prometheus", metavar="URL", help="Prometheus base URL: the live form")
    live.add_argument("--namespace", metavar="NS", help="the pool's namespace")
    live.add_argument("--selector", metavar="k=v[,k=v]", help="the pool's pod labels")
    live.add_argument("--preset", choices=tuple(PRESETS),
                      help="what to count per pod (default teleport-auth)")
    live.add_argument("--query", metavar="PROMQL",
                      help="one series per pod (implies --preset custom); placeholders "
                           "$matchers, $namespace, $pods, $pod_label")
    live.add_argument("--pod-label", metavar="LABEL", help="the label naming the pod (pod)")
    live.add_argument("--kubeconfig", metavar="PATH",
                      help="take the pods and their readiness from this cluster")
    live.add_argument("--bearer-token-file", metavar="PATH", help="send this bearer token")
    live.add_argument("--ca-file", metavar="PATH", help="verify Prometheus with this CA bundle")
    live.add_argument("--insecure-skip-verify", action="store_true", default=None,
                      help="do not verify Prometheus's certificate")
    live.add_argument("--header", metavar="K=V", action="append",
                      help="an extra header, e.g. X-Scope-OrgID=tenant (repeatable)")
    live.add_argument("--timeout", metavar="SECONDS", type=float, help="query timeout (10)")
    live.add_argument("--max-staleness", metavar="SECONDS", type=float,
                      help="refuse samples older than this (60)")


def wants_live(args: argparse.Namespace) -> bool:
    return getattr(args, "prometheus", None) is not None


def read_live(args: argparse.Namespace, policy: Policy) -> LiveSnapshot:
    namespace = args.namespace
    if not namespace:
        raise LiveError("--namespace: required with --prometheus")
    selector = _selector(args, policy)
    metrics = _metrics(args, policy.metrics)
    effective = replace(policy, selector=selector, metrics=metrics)
    try:
        source = PrometheusLoadSource.from_spec(metrics, namespace=namespace, selector=selector)
    except ValueError as exc:
        raise LiveError(f"{_flag(str(exc))}: {exc}") from None
    try:
        if args.kubeconfig:
            if not os.path.isfile(args.kubeconfig):
                raise LiveError(f"--kubeconfig: no such file {args.kubeconfig}")
            # Imported here: the kubernetes client takes longer to import than a plan takes.
            from connbalance.kube.readiness import read_pods

            pods = read_pods(kubeconfig=args.kubeconfig, namespace=namespace, selector=selector)
            ready = [p.name for p in pods if p.ready]
            loads = asyncio.run(source.read(pods=ready))
            return LiveSnapshot(loads=loads, pods=pods, now=time.time(), policy=effective)
        loads = asyncio.run(source.read_all())
    except (MetricsError, FleetError) as exc:
        hint = ""
        if isinstance(exc, MetricsEmpty) and not args.kubeconfig:
            hint = (" (without --kubeconfig the selector is matched against pod labels copied onto"
                    " the metrics, app.kubernetes.io/x as app_kubernetes_io_x; with --kubeconfig"
                    " pods are selected by name)")
        message = _one_line(f"{exc.reason}: {exc}{hint}")
        raise LiveError(message, exit_code=EXIT_UNAVAILABLE) from None
    now = time.time()
    since = now - policy.balance.settle_seconds - _SETTLED_MARGIN
    pods = tuple(PodState(name=p, ready=True, ready_since=since) for p in sorted(loads))
    return LiveSnapshot(loads=loads, pods=pods, now=now, policy=effective)


def _selector(args: argparse.Namespace, policy: Policy) -> tuple[tuple[str, str], ...]:
    if args.selector is None:
        # plan.py gives a placeholder selector when there is no --policy: never query with it.
        if getattr(args, "policy", None) and policy.selector:
            return policy.selector
        raise LiveError("--selector: required with --prometheus (or a --policy that has one)")
    pairs = []
    for item in args.selector.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LiveError(f"--selector: {item!r} is not k=v (use k=v[,k=v])")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _metrics(args: argparse.Namespace, spec: MetricsSpec) -> MetricsSpec:
    preset, query = spec.preset, spec.query
    if args.preset is not None:
        preset, query = args.preset, (query if args.preset == "custom" else None)
    if args.query is not None:
        if args.preset not in (None, "custom"):
            raise LiveError(f"--query: only used with --preset custom, not {args.preset}")
        preset, query = "custom", args.query
    if preset == "custom" and not query:
        raise LiveError("--query: required with --preset custom")
    for flag, value in (("--timeout", args.timeout), ("--max-staleness", args.max_staleness)):
        if value is not None and not value > 0:
            raise LiveError(f"{flag}: must be a positive number of seconds, not {value:g}")
    if args.insecure_skip_verify and args.ca_file:
        raise LiveError("--insecure-skip-verify: cannot be combined with --ca-file")
    headers = dict(spec.headers)
    for item in args.header or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LiveError(f"--header: {item!r} is not K=V")
        headers[name] = value
    updated = replace(
        spec,
        url=args.prometheus,
        preset=preset,
        query=query,
        headers=tuple(sorted(headers.items())),
    )
    if args.pod_label is not None:
        updated = replace(updated, pod_label=args.pod_label)
    if args.bearer_token_file is not None:
        updated = replace(updated, bearer_token_file=args.bearer_token_file,
                          bearer_token_secret=None)
    if args.ca_file is not None:
        updated = replace(updated, ca_file=args.ca_file, ca_secret=None,
                          insecure_skip_verify=False)
    if args.insecure_skip_verify:
        updated = replace(updated, insecure_skip_verify=True, ca_file=None, ca_secret=None)
    if args.timeout is not None:
        updated = replace(updated, timeout_seconds=args.timeout)
    if args.max_staleness is not None:
        updated = replace(updated, max_staleness_seconds=args.max_staleness)
    return updated


def _flag(message: str) -> str:
    return next((flag for word, flag in _FLAG_FOR if word in message), "--prometheus")


def _one_line(text: str) -> str:
    return " ".join(text.split())

