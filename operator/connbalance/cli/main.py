"""``connbalance``: parse the subcommand and hand over."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from connbalance import __version__
from connbalance.cli.errors import EXIT_USAGE, CliError
from connbalance.cli.plan import add_parser as add_plan_parser

# Subcommands built by their own packages, each ``run(argv) -> int``. Imported on use, so one
# that is missing or broken never stops the others.
_DELEGATED: dict[str, tuple[str, str]] = {
    "run": ("connbalance.kube.main", "the operator: watches ConnectionBalancer resources"),
    "agent": ("connbalance.agent.main", "the pod-side agent that cycles connections"),
    "demo": ("connbalance.sim.demo", "the whole story on loopback, no cluster needed"),
    "bench": ("connbalance.sim.bench", "strategies side by side: JSON and a plot"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connbalance",
        description="Keeps long-lived client connections evenly spread over the pods of a server.",
    )
    parser.add_argument("--version", action="version", version=f"connbalance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_plan_parser(sub)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATED:
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"connbalance {args.command}: {exc.message}", file=sys.stderr)
        return exc.exit_code


def _delegate(name: str, argv: list[str]) -> int:
    module_name, _ = _DELEGATED[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            print(f"connbalance {name}: not yet built in this version", file=sys.stderr)
            return EXIT_USAGE
        raise
    run: Callable[[list[str]], int] = module.run
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
