"""Render the Teleport rollout test's figures (tests/e2e/test_teleport_rollout.py, which writes
them as JSON when ``CONNBALANCE_TELEPORT_FIGURES`` names a path) into docs/teleport.md, between
its two markers::

    python -m tests.e2e.teleport_figures [--figures docs/teleport/rollout.json] \
        [--doc docs/teleport.md]

``--check`` writes nothing and exits 1 when the page's section differs from the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "teleport" / "rollout.json"
DOC = ROOT / "docs" / "teleport.md"
BEGIN = "<!-- rollout-figures:begin (python -m tests.e2e.teleport_figures) -->"
END = "<!-- rollout-figures:end -->"
RUNS = (("agent", "steering by the agent (nftables)"), ("none", "`steering: none`"))
FLEETS = (("grpcio", "grpcio"), ("go", "grpc-go"))


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _loads(values: list[int]) -> str:
    return " / ".join(str(v) for v in values)


def _failed(group: dict[str, Any]) -> str:
    codes = group.get("failed_by_code") or {}
    spelled = ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))
    return f"{group['calls_failed']} ({spelled})" if spelled else str(group["calls_failed"])


def _load_average(run: dict[str, Any]) -> str:
    def spelled(values: list[float]) -> str:
        return "/".join(f"{v:.1f}" for v in values)

    return f"{spelled(run['load_average']['start'])} → {spelled(run['load_average']['end'])}"


def run_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    present = [(key, label) for key, label in RUNS if key in runs]
    lines = [
        "| | " + " | ".join(label for _, label in present) + " |",
        "| --- |" + " --- |" * len(present),
    ]

    def row(name: str, cell: Any) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(runs[key]) for key, _ in present) + " |")

    row("load average (1/5/15 min), start → end", _load_average)
    row("`rollout restart` to `rollout status` done", lambda r: _seconds(r["rollout_seconds"]))
    row("connections per pod after the rollout", lambda r: _loads(r["loads_after_rollout"]))
    row("max/mean after the rollout", lambda r: f"{r['skew_after_rollout']:.2f}")
    row(
        "time to first drain (from the rollout's end)", lambda r: _seconds(r["time_to_first_drain"])
    )
    row("time to balance (max/mean ≤ 1.10, from the rollout's end)",
        lambda r: _seconds(r["time_to_balance"]))  # fmt: skip
    row("needed (load above the mean after the rollout)", lambda r: f"{r['needed']:g}")
    row("cycled (the agents' `cycled_total`)", lambda r: str(r["cycled"]))
    row("**cycled/needed**", lambda r: f"**{r['cycled_per_needed']:.2f}**")
    row("asked by the operator (`requested_total`)", lambda r: str(r["requested"]))
    row("connections per pod at the end", lambda r: _loads(r["final_loads"]))
    row("**max/mean at the end**", lambda r: f"**{r['max_mean']:.2f}**")
    for fleet, name in FLEETS:
        for group in ("retry", "failfast"):
            row(f"failed calls, {name} {group} group: in the restart / while balancing",
                lambda r, f=fleet, g=group: _phases(r["fleets"][f], g))  # fmt: skip
    return lines


def _phases(fleet: dict[str, Any], group: str) -> str:
    restart, balancing = fleet["restart"]["groups"][group], fleet["balancing"]["groups"][group]
    return f"{_failed(restart)} / {_failed(balancing)}"


def fleet_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| run | fleet | stream breaks | reconnects (grpc-go) | transient failures "
        "| dials refused at the proxy, dialled again | clients the proxy placed nowhere |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in RUNS:
        if key not in runs:
            continue
        for fleet, name in FLEETS:
            data = runs[key]["fleets"][fleet]
            report, proxy = data["balancing"], data["proxy"]
            lines.append(
                f"| {label} | {name} | {report.get('stream_breaks', 0)} "
                f"| {report.get('reconnects', '-')} | {report.get('transient_failures', '-')} "
                f"| {proxy['refused']} | {proxy['gave_up']} |"
            )
    return lines


def verdict(runs: dict[str, dict[str, Any]]) -> list[str]:
    if "agent" not in runs or "none" not in runs:
        return []
    steered, loose = runs["agent"], runs["none"]
    return [
        f"What steering buys here: {steered['cycled']} connections cycled for "
        f"{steered['needed']:g} needed ({steered['cycled_per_needed']:.2f} times), against "
        f"{loose['cycled']} for {loose['needed']:g} without it "
        f"({loose['cycled_per_needed']:.2f} times); balanced "
        f"{steered['time_to_balance']:.1f} s after the rollout's end, against "
        f"{loose['time_to_balance']:.1f} s without. Without steering, each cycled client's "
        "reconnect "
        "lands on any Ready pod, the shedding ones included, so the operator needs more "
        "closes for the same balance.",
    ]


def section(figures: dict[str, Any]) -> str:
    machine, clients = figures["machine"], figures["clients"]
    total = sum(c["count"] for c in clients.values())
    described = " and ".join(
        f"{spec['count']} {name} clients ({spec['failfast']} fail-fast)"
        for name, spec in (("grpcio", clients["grpcio"]), ("grpc-go", clients["go"]))
    )
    runs = figures["runs"]
    lines = [
        BEGIN,
        "",
        f"Measured with `{figures['command']}` (`CONNBALANCE_HELM` naming the binary of "
        "`make helm`, as `make test` sets it), then rendered here by "
        "`python -m tests.e2e.teleport_figures` from "
        "[`teleport/rollout.json`](teleport/rollout.json). Machine: "
        f"{machine['system']}, {machine['cpus']} CPUs, Python {machine['python']}, shared with "
        "other work (its load average is in the table).",
        "",
        f"Three auth pods and {total} clients: {described}, each client one connection "
        "through the proxy-shaped dialler. The operator's window is "
        f"{figures['actuation']['windowSeconds']:g} s, it settles for "
        f"{figures['balance']['settleSeconds']:g} s, and its steps are "
        f"{figures['balance']['stepIntervalSeconds']:g} s apart.",
        "",
        *run_table(runs),
        "",
        *verdict(runs),
        "",
        "How each fleet reconnected while the operator balanced (from the first drain on; "
        "both fleets' retry groups use the same pinned policy, `connbalance_sim/retrypolicy.py`; "
        "each fleet has its own proxy, so the refused dials, counted over the whole run, are "
        "per fleet):",
        "",
        *fleet_table(runs),
        "",
        END,
    ]
    return "\n".join(_wrapped(line) for line in lines) + "\n"


def _wrapped(line: str) -> str:
    """Prose wrapped at 100 columns as the page is; table rows and markers stay whole."""
    if line.startswith(("|", "<!--")) or len(line) <= 100:
        return line
    return textwrap.fill(line, width=100, break_long_words=False, break_on_hyphens=False)


def replace_section(page: str, rendered: str) -> str:
    """``page`` with its section between the markers replaced; ValueError without them."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"no {BEGIN!r} ... {END!r} markers")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + rendered.rstrip("\n") + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.teleport_figures")
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    figures = json.loads(args.figures.read_text())
    page = args.doc.read_text()
    try:
        updated = replace_section(page, section(figures))
    except ValueError as exc:
        raise SystemExit(f"{args.doc}: {exc}") from None
    if args.check:
        if updated != page:
            print(f"{args.doc}: the rollout figures differ from {args.figures}", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
