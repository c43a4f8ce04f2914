"""``connbalance bench --matrix``: the bench over a grid of scenarios, one run at a time.

The cells: servers 3, 4 and 6; restarts one, half (rounded up) and all; clients 300 and 1,200;
three seeds each (``--quick``: servers 3 and 4, half and all, 300 clients, one seed). Every
cell runs connbalance, its variants and wazuh; ``none`` runs on the first seed of every cell
(the restarts' own harm, the baseline for failed calls), and max-age, random-reconnect and piko
on the first seed of the cells with the fewest clients (the first cell only, with ``--quick``).

Runs go strictly one after another: on two shared cores, runs side by side starve each other's
clients and reconnects, and the figures measure the machine instead of the strategy. The
controller's timing is the quick bench's (settle, step interval and drain window of 1 s), and
each run watches ``duration`` (default 10 s) after its rollout: so the full matrix takes about
90 minutes here, and ``--quick`` under 10.

``--servers``, ``--clients``, ``--restarts``, ``--seed`` and ``--strategies`` narrow the grid to
those values; ``--duration`` replaces the watch. The document (``OUT/matrix.json``, and stdout
with ``--json``) has every run's figures (those of the plain bench, with the lower bounds of
``bounds``) and each cell's median and spread (``matrixreport``); it is written again after
each cell, so an interrupted matrix keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from connbalance_sim import bounds, matrixreport
from connbalance_sim.report import PlainView
from connbalance_sim.scenario import Scenario, client_processes_for
from connbalance_sim.scenario import run as run_scenario
from connbalance_sim.strategies import FACTORIES

CORE: Final = ("connbalance", "connbalance-steer", "connbalance-uniform", "wazuh")
BASELINE: Final = ("none",)
OTHERS: Final = ("max-age", "random-reconnect", "piko")
RESTARTS: Final = ("one", "half", "all")
DURATION: Final = 10.0
# The quick bench's controller timing; see the module docstring.
TIMING: Final[dict[str, float]] = {"pause": 0.5, "warmup": 0.5, "ping": 2.0, "settle": 1.0,
                                   "step_interval": 1.0, "window": 1.0}


@dataclass(frozen=True, slots=True)
class Grid:
    servers: tuple[int, ...]
    restarts: tuple[str, ...]  # one, half, all; or a count given on the command line
    clients: tuple[int, ...]
    seeds: tuple[int, ...]
    others_everywhere: bool  # max-age and friends on the first seed of every smallest cell


FULL: Final = Grid(servers=(3, 4, 6), restarts=RESTARTS, clients=(300, 1200), seeds=(1, 2, 3),
                   others_everywhere=True)
QUICK: Final = Grid(servers=(3, 4), restarts=("half", "all"), clients=(300,), seeds=(1,),
                    others_everywhere=False)


@dataclass(frozen=True, slots=True)
class Cell:
    servers: int
    restarts: str
    clients: int

    @property
    def restarted(self) -> int:
        return restarted(self.servers, self.restarts)

    @property
    def label(self) -> str:
        return f"{self.servers} servers, {self.clients} clients, {self.restarts} restarted"


def restarted(servers: int, restarts: str) -> int:
    """How many pods a restart label means: one, half rounded up, all, or a count."""
    if restarts == "one":
        return 1
    if restarts == "half":
        return math.ceil(servers / 2)
    if restarts == "all":
        return servers
    count = int(restarts)
    if not 1 <= count <= servers:
        raise ValueError(f"restarts {count} must be between 1 and servers ({servers})")
    return count


def cells(grid: Grid) -> list[Cell]:
    return [Cell(servers=s, restarts=r, clients=c)
            for c in grid.clients for s in grid.servers for r in grid.restarts]


def strategies_for(grid: Grid, cell: Cell, seed: int, *, first_cell: Cell) -> list[str]:
    """Which strategies run in this cell on this seed (see the module docstring)."""
    names = list(CORE)
    if seed == grid.seeds[0]:
        names = [*BASELINE, *names]
        smallest = cell.clients == min(grid.clients)
        if (grid.others_everywhere and smallest) or cell == first_cell:
            names += OTHERS
    return names


def grid_from(args: argparse.Namespace) -> Grid:
    base = QUICK if args.quick else FULL
    return Grid(
        servers=(args.servers,) if args.servers is not None else base.servers,
        restarts=(str(args.restarts),) if args.restarts is not None else base.restarts,
        clients=(args.clients,) if args.clients is not None else base.clients,
        seeds=(args.seed,) if args.seed is not None else base.seeds,
        others_everywhere=base.others_everywhere,
    )


def scenario_for(base: Scenario, cell: Cell, seed: int, *, duration: float,
                 failfast: int | None) -> Scenario:
    timed = replace(base, pause=TIMING["pause"], warmup=TIMING["warmup"], ping=TIMING["ping"],
                    settle=TIMING["settle"], step_interval=TIMING["step_interval"],
                    window=TIMING["window"])
    return replace(
        timed, servers=cell.servers, restarts=cell.restarted, clients=cell.clients,
        seed=seed, duration=duration, block=0,
        client_processes=client_processes_for(cell.clients),
        # Two kinds of client, reported apart, as the plain bench has them: half fail fast.
        failfast=cell.clients // 2 if failfast is None else min(failfast, cell.clients))


def plan_runs(grid: Grid, chosen: Sequence[str] | None) -> list[tuple[Cell, int, str]]:
    every = cells(grid)
    runs = []
    for cell in every:
        for seed in grid.seeds:
            for name in strategies_for(grid, cell, seed, first_cell=every[0]):
                if chosen is None or name in chosen:
                    runs.append((cell, seed, name))
    return runs


Result = Callable[[Scenario, Any], dict[str, Any]]


def run(args: argparse.Namespace, *, base: Scenario, result_of: Result,
        machine: str) -> int:
    """Run the matrix for ``bench.run``: ``base`` carries the bench's flags (agent mode,
    metrics, net), ``result_of`` makes a run's figures as the plain bench reports them."""
    grid = grid_from(args)
    chosen = None
    if args.strategies:
        chosen = [n.strip() for n in args.strategies.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in FACTORIES]
        if unknown:
            print(f"connbalance bench: unknown strategy {unknown[0]}", file=sys.stderr)
            return 2
    try:
        for cell in cells(grid):
            _ = cell.restarted
    except ValueError as exc:
        print(f"connbalance bench --matrix: {exc}", file=sys.stderr)
        return 2
    duration = args.duration if args.duration is not None else DURATION
    runs = plan_runs(grid, chosen)
    started, load_at_start = time.monotonic(), os.getloadavg()
    header = {"grid": asdict(grid), "timing": {**TIMING, "duration": duration},
              "machine": machine, "runs_planned": len(runs)}
    print(f"bench --matrix: {len(runs)} runs in {len(cells(grid))} cells, one at a time",
          file=sys.stderr, flush=True)
    done: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for index, (cell, seed, name) in enumerate(runs, 1):
        scenario = scenario_for(base, cell, seed, duration=duration,
                                failfast=getattr(args, "failfast", None))
        print(f"bench --matrix [{index}/{len(runs)}] {cell.label}, seed {seed}: {name} ...",
              file=sys.stderr, flush=True)
        view = PlainView(out=sys.stderr, prefix=f"  [{name}] ") if args.verbose else None
        where = {"servers": cell.servers, "restarts": cell.restarts,
                 "restarted": cell.restarted, "clients": cell.clients, "seed": seed}
        try:
            record = asyncio.run(run_scenario(scenario, FACTORIES[name](), view=view))
        except (RuntimeError, TimeoutError, OSError) as exc:
            # A run the machine could not carry (a server that did not start in time on a
            # busy machine) is kept as such, and the matrix goes on.
            done.append({**where, "strategy": name, "error": f"{type(exc).__name__}: {exc}"})
        else:
            done.append({**where, **result_of(scenario, record),
                         **bounds.result(record, scenario)})
        print(f"bench --matrix: {json.dumps(done[-1])}", file=sys.stderr, flush=True)
        last_of_cell = index == len(runs) or runs[index][0] != cell
        if last_of_cell:
            _write(args.out, _document(header, done, started=started, load=load_at_start))
    doc = _document(header, done, started=started, load=load_at_start)
    _write(args.out, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(matrixreport.table(doc))
    return 0


def _document(header: dict[str, Any], runs: list[dict[str, Any]], *, started: float,
              load: tuple[float, float, float]) -> dict[str, Any]:
    measured = [r for r in runs if "error" not in r]
    return {
        "matrix": {**header, "wall_seconds": round(time.monotonic() - started, 1),
                   # Figures from a shared machine mean little without how busy it was.
                   "load_average": {"start": [round(x, 2) for x in load],
                                    "end": [round(x, 2) for x in os.getloadavg()]}},
        "runs": runs,
        "cells": matrixreport.aggregate(measured),
        "goals": matrixreport.goals(measured),
        "failed_runs": len(runs) - len(measured),
    }


def _write(out: Path, doc: dict[str, Any]) -> None:
    (out / "matrix.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "matrix.md").write_text(matrixreport.table(doc))
