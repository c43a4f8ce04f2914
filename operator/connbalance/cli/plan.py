"""``connbalance plan``: what would be cycled and why, from a loads file or live Prometheus.

Offline form: ``--loads FILE.json`` holding
``{"pods": [{"name": str, "load": number, "ready": bool, "readySeconds": number}]}`` (``ready``
defaults to true; without ``readySeconds`` a pod counts as settled) and an optional
``--policy FILE.yaml``, a ConnectionBalancer manifest of which only ``spec`` is read.
Exit code 0 whether or not it would act; 2 for bad input, naming the file and the field.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from connbalance.cli.errors import EXIT_OK, CliError
from connbalance.model import Plan, PodLoad, PodName, PodState, Policy, PolicyError
from connbalance.planner import plan as make_plan

# Offline snapshots have no clock: everything is measured "now", and a pod without
# readySeconds has been Ready forever.
_NOW = 1_000_000_000.0
_SETTLED = 0.0
# A selector is required of real resources; an offline plan without a policy file needs one.
_OFFLINE_SPEC: dict[str, Any] = {"selector": {"matchLabels": {"connbalance.io/offline": "true"}}}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "plan",
        help="dry run: what would be cycled and why",
        description="Show what connbalance would cycle, and why, without changing anything.",
    )
    parser.add_argument("--loads", type=Path, metavar="FILE.json", help="offline pod loads")
    parser.add_argument(
        "--policy", type=Path, metavar="FILE.yaml", help="a ConnectionBalancer manifest"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    live = _live_module()
    if live is not None:
        live.add_arguments(parser)
    parser.set_defaults(handler=run)


def _live_module() -> ModuleType | None:
    try:
        return importlib.import_module("connbalance.cli.plan_live")
    except ModuleNotFoundError as exc:
        if exc.name == "connbalance.cli.plan_live":
            return None
        raise


def run(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy) if args.policy else Policy.from_spec(_OFFLINE_SPEC)
    live = _live_module()
    if live is not None and live.wants_live(args):
        if args.loads:
            raise CliError("--loads and --prometheus cannot be combined")
        snapshot = live.read_live(args, policy)
        loads, pods, now = snapshot.loads, snapshot.pods, snapshot.now
        policy = snapshot.policy or policy  # the flags applied over the policy file
    elif args.loads:
        loads, pods = read_loads(args.loads)
        now = _NOW
    else:
        raise CliError("give --loads FILE.json (offline) or --prometheus URL (live)")
    result = make_plan(loads=loads, pods=pods, policy=policy, now=now)
    if args.json:
        print(json.dumps(plan_json(result)))
    else:
        print_table(result, {p: v.load for p, v in loads.items()}, pods)
    return EXIT_OK


def plan_json(result: Plan) -> dict[str, Any]:
    return {
        "mean": result.mean,
        "skew": result.skew,
        "act": result.act,
        "reason": result.reason,
        "drains": [{"pod": d.pod, "count": d.count} for d in result.drains],
    }


def read_policy(path: Path) -> Policy:
    document = _read_document(path, yaml.safe_load)
    if not isinstance(document, Mapping):
        raise CliError(f"{path}: must hold a ConnectionBalancer manifest (a YAML mapping)")
    kind = document.get("kind")
    if kind != "ConnectionBalancer":
        raise CliError(f"{path}: kind: must be ConnectionBalancer, not {kind!r}")
    try:
        return Policy.from_spec(document.get("spec"))
    except PolicyError as exc:
        raise CliError(f"{path}: {exc}") from None


def read_loads(path: Path) -> tuple[dict[PodName, PodLoad], tuple[PodState, ...]]:
    document = _read_document(path, json.loads)
    if not isinstance(document, Mapping) or not isinstance(document.get("pods"), list):
        raise CliError(f'{path}: pods: required, a list of {{"name", "load", "ready"}}')
    loads: dict[PodName, PodLoad] = {}
    pods: list[PodState] = []
    for index, entry in enumerate(document["pods"]):
        where = f"{path}: pods[{index}]"
        if not isinstance(entry, Mapping):
            raise CliError(f"{where}: must be an object")
        unknown = sorted(set(entry) - {"name", "load", "ready", "readySeconds"})
        if unknown:
            raise CliError(f"{where}.{unknown[0]}: unknown field")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise CliError(f"{where}.name: required, a non-empty string")
        if PodName(name) in loads:
            raise CliError(f"{where}.name: {name!r} appears twice")
        load = _number(entry.get("load"), f"{where}.load", required=True)
        ready = entry.get("ready", True)
        if not isinstance(ready, bool):
            raise CliError(f"{where}.ready: must be true or false")
        ready_seconds = _number(entry.get("readySeconds"), f"{where}.readySeconds")
        since = _SETTLED if ready_seconds is None else _NOW - ready_seconds
        loads[PodName(name)] = PodLoad(pod=PodName(name), load=load, timestamp=_NOW)
        pods.append(PodState(name=PodName(name), ready=ready, ready_since=since if ready else None))
    return loads, tuple(pods)


def _number(value: object, where: str, *, required: bool = False) -> Any:
    if value is None:
        if required:
            raise CliError(f"{where}: required, a number")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CliError(f"{where}: must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise CliError(f"{where}: must be a finite number, zero or more, not {value!r}")
    return float(value)


def _read_document(path: Path, parse: Any) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(f"{path}: not valid {path.suffix.lstrip('.') or 'input'}: {first}") from None


def print_table(result: Plan, loads: Mapping[PodName, float], pods: tuple[PodState, ...]) -> None:
    console = Console()
    drains = {d.pod: d for d in result.drains}
    ignored = dict(result.ignored)
    table = Table(title="connbalance plan", title_justify="left")
    for column, justify in (
        ("pod", "left"),
        ("ready", "center"),
        ("load", "right"),
        ("vs mean", "right"),
        ("cycle", "right"),
        ("why", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for pod in sorted(pods, key=lambda p: p.name):
        load = loads.get(pod.name)
        ratio = f"{load / result.mean:.2f}x" if load is not None and result.mean else "-"
        drain = drains.get(pod.name)
        why = drain.reason if drain else ignored.get(pod.name, "")
        table.add_row(
            pod.name,
            "yes" if pod.ready else "[red]no[/]",
            "-" if load is None else f"{load:g}",
            ratio,
            f"[bold]{drain.count}[/]" if drain else "0",
            why,
        )
    console.print(table)
    verdict = "[bold green]act[/]" if result.act else "[bold]hold[/]"
    console.print(f"mean {result.mean:.1f}   skew {result.skew:.3f}   {verdict}: {result.reason}")
