"""``kubectl connbalance``: the kubectl plugin (the ``kubectl-connbalance`` console script).

kubectl runs ``kubectl-connbalance`` from PATH for ``kubectl connbalance ...`` and hands it every
argument after the plugin's name. Two subcommands:

- ``plan ...``: ``connbalance plan``, as is (``-n NS`` reads as ``--namespace NS``);
- ``status NAME [-n NS] [--context C] [--kubeconfig F]``: one ConnectionBalancer on one screen,
  from its status: phase, skew, each pod's load against its target, the last drain of each pod
  with the connections requested and confirmed, and the conditions.

As kubectl does, the cluster and the namespace come from the current context of $KUBECONFIG (or
~/.kube/config) unless ``--context``, ``--kubeconfig`` or ``-n`` say otherwise; inside a pod,
with no kubeconfig, from the pod's ServiceAccount.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from connbalance.cli.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from connbalance.kube.crd import GROUP, KIND, PLURAL, VERSION

PROG = "kubectl connbalance"
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_CONDITIONS = ("Ready", "MetricsAvailable", "Balanced", "Converging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="connbalance from kubectl: plans, and a ConnectionBalancer's status."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("plan", help="connbalance plan: what would be cycled and why", add_help=False)
    status = sub.add_parser("status", help="a ConnectionBalancer on one screen")
    status.add_argument("name", metavar="NAME", help="the ConnectionBalancer")
    status.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    status.add_argument("--context", help="the kubeconfig context (default: the current one)")
    status.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG)")
    return parser


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["plan"]:
        from connbalance.cli.main import main as connbalance_main

        return connbalance_main(["plan", *_namespace_flag(args_list[1:])])
    args = build_parser().parse_args(args_list)
    out = console or Console()
    try:
        api, namespace = connect(
            kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace
        )
        body = read_balancer(api, name=args.name, namespace=namespace)
    except CliError as exc:
        print(f"{PROG} {args.command}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    render_status(body, out)
    return 0


def _namespace_flag(args: list[str]) -> list[str]:
    """kubectl's ``-n NS`` and ``-nNS`` as ``connbalance plan`` spells it, ``--namespace``."""
    out: list[str] = []
    for arg in args:
        if arg == "-n":
            out.append("--namespace")
        elif arg.startswith("-n") and not arg.startswith("--"):
            out.append(f"--namespace={arg[2:].lstrip('=')}")
        else:
            out.append(arg)
    return out


def connect(
    *, kubeconfig: str | None, context: str | None, namespace: str | None
) -> tuple[Any, str]:
    """A CustomObjectsApi for the chosen context, and the namespace to look in."""
    from kubernetes import client, config

    try:
        if kubeconfig or context or not _in_cluster():
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context
            )
            chosen = namespace or context_namespace(kubeconfig=kubeconfig, context=context)
        else:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
            chosen = namespace or _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except (config.ConfigException, OSError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "kubeconfig"
        raise CliError(f"{where}: {exc}", exit_code=EXIT_USAGE) from exc
    return client.CustomObjectsApi(api_client), chosen


def _in_cluster() -> bool:
    import os

    from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION

    paths = os.environ.get("KUBECONFIG", KUBE_CONFIG_DEFAULT_LOCATION).split(os.pathsep)
    has_file = any(Path(p).expanduser().is_file() for p in paths if p)
    return not has_file and "KUBERNETES_SERVICE_HOST" in os.environ


def context_namespace(*, kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the named (or current) context, "default" when it names none."""
    from kubernetes import config

    contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    chosen = current
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
        if chosen is None:
            raise CliError(f"--context: no context {context!r} in the kubeconfig")
    namespace = (chosen or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


def read_balancer(api: Any, *, name: str, namespace: str) -> Mapping[str, Any]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        body: Mapping[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(
                f"{KIND} {name!r} not found in namespace {namespace!r}", exit_code=1
            ) from exc
        raise CliError(
            f"cannot read {KIND} {namespace}/{name}: HTTP {exc.status} {exc.reason}",
            exit_code=EXIT_UNAVAILABLE,
        ) from exc
    except (HTTPError, OSError) as exc:
        raise CliError(f"cannot reach the API server: {exc}", exit_code=EXIT_UNAVAILABLE) from exc
    return body


@dataclass(frozen=True, slots=True)
class Drain:
    """A pod's last drain as status records it: the request id and, where known, how many
    connections were requested and how many the agent confirmed it cycled."""

    id: str
    requested: int | None = None
    confirmed: int | None = None
    at: str | None = None


def last_drain(pod: Mapping[str, Any]) -> Drain | None:
    """``lastDrain`` is the request id, with ``lastDrainRequested``, ``lastDrainConfirmed`` and
    ``lastDrainAt`` beside it; an object ``{id, requested, confirmed, at}`` reads the same."""
    found = pod.get("lastDrain")
    if isinstance(found, Mapping):
        if not found.get("id"):
            return None
        return Drain(
            id=str(found["id"]),
            requested=_int(found.get("requested")),
            confirmed=_int(found.get("confirmed")),
            at=_str(found.get("at")),
        )
    if not found:
        return None
    return Drain(
        id=str(found),
        requested=_int(pod.get("lastDrainRequested")),
        confirmed=_int(pod.get("lastDrainConfirmed")),
        at=_str(pod.get("lastDrainAt")),
    )


def render_status(body: Mapping[str, Any], console: Console) -> None:
    """Four short tables under a two-line header: fits 80 columns and one screen."""
    meta, spec = body.get("metadata", {}), body.get("spec", {})
    status: Mapping[str, Any] = body.get("status") or {}
    title = f"{KIND} {meta.get('namespace')}/{meta.get('name')}"
    if not status:
        console.print(
            f"{title}: no status yet (is the operator running and serving this namespace?)"
        )
        return
    modes = [m for m, on in (("dry run", spec.get("dryRun")), ("paused", spec.get("paused"))) if on]
    console.print(
        f"[bold]{title}[/bold]: phase [bold]{status.get('phase', '-')}[/bold]"
        + (f" [yellow]({', '.join(modes)})[/yellow]" if modes else ""),
        highlight=False,
    )
    skew = status.get("skew")
    line = f"skew {'-' if skew is None else f'{float(skew):.3f}'}"
    tolerance = (spec.get("balance") or {}).get("tolerance")
    if tolerance is not None:
        line += f", acts above {1 + float(tolerance):.2f}"
    console.print(f"{line}; {status.get('podCount', '-')} pods", highlight=False)
    for label, key in (("last action", "lastAction"), ("reason", "reason")):
        if status.get(key):
            console.print(f"{label}: {status[key]}", highlight=False)
    pods = status.get("pods") or []
    console.print(_pods_table(pods))
    console.print(_drains_table(pods))
    console.print(_conditions_table(status.get("conditions") or []))


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.MINIMAL, show_edge=False)


def _pods_table(pods: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("load per pod")
    table.add_column("pod", overflow="fold")
    table.add_column("ready")
    for column in ("load", "target", "load/target"):
        table.add_column(column, justify="right")
    for pod in pods:
        load, target = _float(pod.get("load")), _float(pod.get("target"))
        table.add_row(
            str(pod.get("name", "?")),
            "yes" if pod.get("ready") else "no",
            _number(load),
            _number(target),
            f"{load / target:.2f}" if load is not None and target else "-",
        )
    return table


def _drains_table(pods: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("last drains")
    table.add_column("pod", overflow="fold")
    table.add_column("request", overflow="fold")
    for column in ("requested", "confirmed"):
        table.add_column(column, justify="right")
    table.add_column("at")
    drains = [(str(pod.get("name", "?")), drain) for pod in pods if (drain := last_drain(pod))]
    # Newest first: ids end in <episode>.<step>.<pod>, and the time when status gives one.
    for name, drain in sorted(drains, key=lambda d: (d[1].at or "", d[1].id), reverse=True):
        table.add_row(
            name,
            drain.id,
            "-" if drain.requested is None else str(drain.requested),
            "-" if drain.confirmed is None else str(drain.confirmed),
            drain.at or "-",
        )
    return table


def _conditions_table(conditions: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("conditions")
    for column in ("type", "status", "reason"):
        table.add_column(column)
    table.add_column("since", no_wrap=True, min_width=20)
    table.add_column("message", overflow="fold")
    order = {name: index for index, name in enumerate(_CONDITIONS)}
    for condition in sorted(conditions, key=lambda c: order.get(str(c.get("type")), 99)):
        table.add_row(
            str(condition.get("type", "?")),
            str(condition.get("status", "?")),
            str(condition.get("reason", "")),
            str(condition.get("lastTransitionTime", "")),
            str(condition.get("message", "")),
        )
    return table


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return None if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
