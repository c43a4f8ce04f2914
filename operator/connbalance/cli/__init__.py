"""Entry points: the ``connbalance`` command and its subcommands. Wiring only: each subcommand
parses its flags and calls into the layers below."""

from connbalance.cli.main import main

__all__ = ["main"]
