"""``connbalance``: parse the subcommand and hand over.

``run``, ``agent`` and ``node-agent`` belong to this package. ``demo`` and ``bench`` are plugins,
as pytest and flake8 find theirs: a distribution registers ``name = "module:run"`` in the
``connbalance.commands`` entry-point group (the simulator, ``connbalance-sim``, registers both),
so connbalance itself imports nothing of it and runs without it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Final

from connbalance import __version__
from connbalance.agent.main import run as run_agent
from connbalance.agent.nodemain import run as run_node_agent
from connbalance.cli.errors import EXIT_USAGE, CliError
from connbalance.cli.plan import add_parser as add_plan_parser
from connbalance.kube.main import run as run_operator

COMMANDS_GROUP: Final = "connbalance.commands"

# Each takes the rest of the command line and parses its own flags.
Command = Callable[[list[str]], int]

_BUILT_IN: Final[dict[str, tuple[Command, str]]] = {
    "run": (run_operator, "the operator: watches ConnectionBalancer resources"),
    "agent": (run_agent, "the pod-side agent that cycles connections"),
    "node-agent": (run_node_agent, "the node agent: cycles connections of the pods on its node"),
}
# Listed in --help whether or not the plugin is installed, so people learn that they exist.
_PLUGINS: Final[dict[str, str]] = {
    "demo": "the whole story on loopback, no cluster needed (needs the simulator)",
    "bench": "strategies side by side: JSON and a plot (needs the simulator)",
}
NOT_INSTALLED: Final = (
    "connbalance {name}: the simulator is not installed: pip install 'connbalance[sim]' "
    "connbalance-sim (the 'sim' extra brings grpcio and matplotlib), or `make {name}` in a checkout"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connbalance",
        description="Keeps long-lived client connections evenly spread over the pods of a server.",
    )
    parser.add_argument("--version", action="version", version=f"connbalance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_plan_parser(sub)
    for name, (_, help_text) in _BUILT_IN.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, help_text in _PLUGINS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def installed_plugins() -> Iterable[EntryPoint]:
    return entry_points(group=COMMANDS_GROUP)


def find_plugin(name: str, *, found: Iterable[EntryPoint]) -> Command | None:
    """The command that an installed distribution registered as ``name``, loaded; else None."""
    for entry in found:
        if entry.name == name:
            command: Command = entry.load()
            return command
    return None


def main(
    argv: Sequence[str] | None = None,
    *,
    plugins: Callable[[], Iterable[EntryPoint]] = installed_plugins,
) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    name, rest = (args_list[0], args_list[1:]) if args_list else ("", [])
    if name in _BUILT_IN:
        return _BUILT_IN[name][0](rest)
    if name in _PLUGINS:
        command = find_plugin(name, found=plugins())
        if command is None:
            print(NOT_INSTALLED.format(name=name), file=sys.stderr)
            return EXIT_USAGE
        return command(rest)
    args = build_parser().parse_args(args_list)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"connbalance {args.command}: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
