"""The CLI's plugin commands: found through entry points, and a clear line when none is there."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from connbalance.cli.main import COMMANDS_GROUP, find_plugin, installed_plugins, main

_CALLS: list[list[str]] = []


def _recording_command(argv: list[str]) -> int:
    _CALLS.append(argv)
    return 7


def _entry(name: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:_recording_command", group=COMMANDS_GROUP)


def test_demo_without_the_simulator_exits_2_with_one_line_naming_the_extra(capsys):
    assert main(["demo", "--no-tty"], plugins=list) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "connbalance demo: the simulator is not installed: pip install 'connbalance[sim]' "
        "connbalance-sim (the 'sim' extra brings grpcio and matplotlib), or `make demo` in a "
        "checkout\n")


def test_bench_without_the_simulator_names_its_own_make_target(capsys):
    _CALLS.clear()
    assert main(["bench"], plugins=lambda: [_entry("demo")]) == 2
    assert "`make bench`" in capsys.readouterr().err
    assert _CALLS == []


def test_a_registered_command_gets_the_rest_of_the_command_line_and_its_exit_code():
    _CALLS.clear()
    assert main(["bench", "--quick", "--json"], plugins=lambda: [_entry("bench")]) == 7
    assert _CALLS == [["--quick", "--json"]]


def test_finds_nothing_among_no_entry_points():
    assert find_plugin("demo", found=[]) is None


def test_built_in_commands_never_look_for_plugins(capsys):
    def no_plugins_please() -> list[EntryPoint]:
        raise AssertionError("looked up entry points")

    assert main(["agent", "--help"], plugins=no_plugins_please) == 0
    assert capsys.readouterr().out.startswith("usage: connbalance agent")
    with pytest.raises(SystemExit, match="0"):
        main(["run", "--help"], plugins=no_plugins_please)


def test_the_simulator_in_this_checkout_registers_demo_and_bench():
    # make venv installs sim/ (connbalance-sim) beside connbalance: its entry points are these.
    found = {entry.name: entry.value for entry in installed_plugins()}
    assert found == {"demo": "connbalance_sim.demo:run", "bench": "connbalance_sim.bench:run"}
