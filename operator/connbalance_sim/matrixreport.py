"""The scenario matrix's figures per cell (median and spread over seeds), its goals and its
Markdown tables. Pure: runs in, dictionaries and text out.

A run that never balanced has no time to balance: it sorts after every time (as infinity), so
a median over runs of which most never balanced reads "never". Peers, for the goal "no worse
than any peer's", are the other strategies in the cell that balanced in most of their runs
(``none`` and a strategy that does not balance cycle little by doing nothing), connbalance's
own variants aside: they are the same controller steered another way, shown beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

CELL_KEYS: Final = ("servers", "restarts", "clients")
FIGURES: Final = ("cycled_ratio", "cycled", "needed", "time_to_balance_s", "time_over_bound",
                  "bound_time_s", "failed_per_1000", "churn_when_balanced", "cycled_again",
                  "cycled_over_uniform_bound", "final_skew")
GOAL_RATIO: Final = 1.05
OURS: Final = "connbalance"


def spread(values: Iterable[float | None], *, none_is: float | None = None
           ) -> dict[str, float | None] | None:
    """Median, least and most; ``None`` values are left out, or counted as ``none_is``."""
    kept = [none_is if v is None else v for v in values]
    numbers = sorted(v for v in kept if v is not None)
    if not numbers:
        return None

    def shown(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 3)

    return {"median": shown(statistics.median(numbers)), "min": shown(numbers[0]),
            "max": shown(numbers[-1])}


def _key(run: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(run[k] for k in CELL_KEYS)


def _groups(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], dict[str, list[Any]]]:
    grouped: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
    for run in runs:
        grouped.setdefault(_key(run), {}).setdefault(run["strategy"], []).append(run)
    return grouped


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell and strategy: how many runs balanced, and each figure's spread."""
    entries = []
    for key, by_strategy in _groups(runs).items():
        for strategy, mine in by_strategy.items():
            entry: dict[str, Any] = dict(zip(CELL_KEYS, key, strict=True))
            entry |= {"strategy": strategy, "runs": len(mine),
                      "balanced": sum(1 for r in mine if r["time_to_balance_s"] is not None)}
            for figure in FIGURES:
                never = math.inf if figure in ("time_to_balance_s", "time_over_bound") else None
                entry[figure] = spread((r.get(figure) for r in mine), none_is=never)
            entries.append(entry)
    return entries


def _median(entry: Mapping[str, Any], figure: str) -> float | None:
    value = entry.get(figure)
    return None if value is None else value["median"]


def goals(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For connbalance in each cell: it balances in every run, its median cycled/needed is 1.05
    or below and no worse than any peer's, and it never churns a balanced pool."""
    verdicts = []
    entries = aggregate(runs)
    for key in _groups(runs):
        cell = [e for e in entries if _key(e) == key]
        ours = next((e for e in cell if e["strategy"] == OURS), None)
        if ours is None:
            continue
        misses = []
        if ours["balanced"] < ours["runs"]:
            misses.append(f"balanced in {ours['balanced']} of {ours['runs']} runs")
        ratio = _median(ours, "cycled_ratio")
        if ratio is None or ratio > GOAL_RATIO:
            misses.append(f"median cycled/needed {ratio} over {GOAL_RATIO}")
        for peer in cell:
            peer_ratio = _median(peer, "cycled_ratio")
            if (not peer["strategy"].startswith(OURS) and peer["strategy"] != "none"
                    and peer["balanced"] * 2 > peer["runs"]
                    and ratio is not None and peer_ratio is not None and peer_ratio < ratio):
                misses.append(f"{peer['strategy']} cycles less ({peer_ratio} against {ratio})")
        churn = ours["churn_when_balanced"]
        if churn is not None and (churn["max"] or 0) > 0:
            misses.append(f"churn when balanced up to {churn['max']:g}")
        verdicts.append({**dict(zip(CELL_KEYS, key, strict=True)), "met": not misses,
                         "misses": misses})
    return verdicts


def _show(value: Mapping[str, Any] | None, *, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"

    def one(x: float | None) -> str:
        return "never" if x is None else f"{x:.{digits}f}{unit}"

    if value["min"] == value["max"]:
        return one(value["median"])
    return f"{one(value['median'])} ({one(value['min'])} to {one(value['max'])})"


def _cell_label(entry: Mapping[str, Any]) -> str:
    return f"{entry['servers']} / {entry['restarts']} / {entry['clients']}"


def headline(doc: Mapping[str, Any]) -> str:
    """Per strategy over every run of the matrix: medians, and connbalance's goals met."""
    runs = [r for r in doc["runs"] if "error" not in r]
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], []).append(run)
    lines = ["| strategy | runs | balanced | cycled/needed | time to balance | ÷ time bound | "
             "failed per 1,000 calls | runs churning a balanced pool |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for strategy, mine in by_strategy.items():
        ratio = spread(r["cycled_ratio"] for r in mine)
        ttb = spread((r["time_to_balance_s"] for r in mine), none_is=math.inf)
        over = spread((r.get("time_over_bound") for r in mine), none_is=math.inf)
        failed = spread(r.get("failed_per_1000") for r in mine)
        churning = sum(1 for r in mine if r["churn_when_balanced"] > 0)
        balanced = sum(1 for r in mine if r["time_to_balance_s"] is not None)
        lines.append(f"| {strategy} | {len(mine)} | {balanced} | {_show(ratio)} | "
                     f"{_show(ttb, digits=1, unit=' s')} | {_show(over, digits=1)} | "
                     f"{_show(failed, digits=1)} | {churning} |")
    met = [g for g in doc["goals"] if g["met"]]
    lines.append("")
    lines.append(f"connbalance meets its goals in {len(met)} of {len(doc['goals'])} cells.")
    return "\n".join(lines) + "\n"


def cell_table(doc: Mapping[str, Any]) -> str:
    """Each cell's strategies: median (least to most) over the seeds."""
    lines = ["| servers / restarted / clients | strategy | balanced | cycled/needed | "
             "cycled, needed | time to balance | ÷ time bound | failed per 1,000 | "
             "churn when balanced | cycled again |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in doc["cells"]:
        counts = f"{_show(e['cycled'], digits=0)}, {_show(e['needed'], digits=0)}"
        lines.append(
            f"| {_cell_label(e)} | {e['strategy']} | {e['balanced']}/{e['runs']} | "
            f"{_show(e['cycled_ratio'])} | {counts} | "
            f"{_show(e['time_to_balance_s'], digits=1, unit=' s')} | "
            f"{_show(e['time_over_bound'], digits=1)} | {_show(e['failed_per_1000'], digits=1)} | "
            f"{_show(e['churn_when_balanced'], digits=0)} | {_show(e['cycled_again'], digits=0)} |")
    return "\n".join(lines) + "\n"


def goal_lines(doc: Mapping[str, Any]) -> str:
    lines = []
    for g in doc["goals"]:
        status = "met" if g["met"] else "missed: " + "; ".join(g["misses"])
        lines.append(f"- {g['servers']} servers, {g['restarts']} restarted, "
                     f"{g['clients']} clients: {status}")
    return "\n".join(lines) + "\n"


def table(doc: Mapping[str, Any]) -> str:
    meta = doc["matrix"]
    load = meta["load_average"]
    bound = next((r["bound_time_s"] for r in doc["runs"] if "error" not in r), None)
    failed = [f"- {r['strategy']} on {r['servers']} servers, {r['restarts']} restarted, "
              f"{r['clients']} clients, seed {r['seed']}: {r['error']}"
              for r in doc["runs"] if "error" in r]
    failures = "\nRuns that could not be made:\n\n" + "\n".join(failed) + "\n" if failed else ""
    return (
        "### Over every run\n\n" + headline(doc)
        + "\n### Per cell: median (least to most) over the seeds\n\n" + cell_table(doc)
        + "\n### connbalance's goals per cell\n\n" + goal_lines(doc)
        + f"\n{len(doc['runs'])} runs of {meta['runs_planned']} planned, one at a time; "
          f"{meta['wall_seconds']:.0f} s in all; time bound {bound} s (settle + one "
          f"measurement + one drain window + the reconnect delay); {meta['machine']}; "
          f"load average {load['start'][0]:.2f} (1 min) at the start, "
          f"{load['end'][0]:.2f} at the end.\n" + failures
    )
