"""``connbalance bench``: the same scenario for each strategy, one after another.

Writes one JSON document (stdout with ``--json``; always ``OUT/bench.json``), one PNG with a panel
per strategy (``OUT/bench.png``) and a Markdown table (``OUT/bench.md``); ``--docs`` also keeps
the document in ``docs/bench.json`` under its agent mode and writes ``docs/bench.md`` and the
mode's plot (``benchdocs``). Progress goes to stderr, so stdout stays one document.

Field meanings: ``needed`` is the load above the mean when the rollout finished; ``cycled`` the
connections closed on purpose from the start of the rollout to the end (restarts excluded);
``time_to_balance_s`` runs from the finished rollout until max/mean stays at or under 1.10 for
the rest of the run (null if it never does); ``churn_when_balanced`` counts closes ordered
while the pool was already balanced, as the controller judges it (``measures``). Each result also
carries the run's lower bounds and its figures as ratios to them (``bounds``).

A fleet of more than 1,200 clients pings less often, so that the whole fleet makes 600 calls a
second (``Scenario.ping_interval``), and its pods may take longer to start
(``Scenario.start_timeout``); ``docs/bench.md`` has the figures at 5 servers and 3,000 clients.

Strategies run one at a time unless ``--parallel`` says otherwise, ``--quick`` included: on two
shared cores, runs side by side starve each other's clients and reconnects, so their figures
measure the machine as much as the strategy. ``--matrix`` runs the scenario matrix instead
(``matrix``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from connbalance.agent.proxy import DEFAULT_REFUSAL, REFUSALS
from connbalance_sim import benchdocs, bounds, harm, matrix, measures
from connbalance_sim.fleet import AGENT_MODES, agent_mode
from connbalance_sim.measures import Record
from connbalance_sim.report import PlainView
from connbalance_sim.scenario import Scenario, client_processes_for
from connbalance_sim.scenario import run as run_scenario
from connbalance_sim.strategies import FACTORIES, NAMES

QUICK = Scenario(servers=3, clients=60, restarts=3, duration=12.0, pause=0.5, warmup=0.5,
                 ping=2.0, settle=1.0, step_interval=1.0, window=1.0)
FULL = Scenario(duration=30.0)
STAGGER = 0.7  # seconds between the starts of runs side by side


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="connbalance bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int)
    p.add_argument("--clients", type=int)
    p.add_argument("--restarts", type=int, help="pods restarted (default: all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--duration", type=float, help="seconds after the rollout finished")
    p.add_argument("--quick", action="store_true",
                   help="a small run, about 2.5 minutes in all (with --matrix: a smaller "
                        "matrix, under 10 minutes)")
    p.add_argument("--matrix", action="store_true",
                   help="the scenario matrix: servers 3, 4, 6 x restarts one, half, all x "
                        "clients 300, 1200 x 3 seeds, one run at a time (about 90 minutes); "
                        "--servers, --clients, --restarts, --seed and --strategies narrow it")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated, from {', '.join(NAMES)} (default: all; with --quick "
                        "all but connbalance-uniform, to keep it short)")
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out)")
    p.add_argument("--docs", action="store_true",
                   help="also keep the document in docs/bench.json under its agent mode, and "
                        "write docs/bench.md and the mode's plot from it")
    p.add_argument("--net", default="127.0.7", help="the /24 (first three octets) to use")
    p.add_argument("--parallel", type=int, default=None,
                   help="strategies run side by side (default 1: one at a time, which "
                        "keeps them from distorting each other's figures)")
    p.add_argument("--metrics", choices=("scrape", "prometheus"), default="scrape",
                   help="how the controller reads load: each pod's /metrics directly (default), "
                        "or a real Prometheus scraping them (Debian's, from make system-deps)")
    p.add_argument("--agent-mode", choices=AGENT_MODES, default="proxy",
                   help="proxy (default), reset (needs CAP_NET_ADMIN; steers with nft), or auto")
    p.add_argument("--refusal", choices=REFUSALS, default=DEFAULT_REFUSAL,
                   help="how a steering proxy refuses: connect (the agent's default: its "
                        "listener closes for the window), reset (accept, then reset) or auto "
                        "(GOAWAY to plaintext HTTP/2; see docs/bench.md, Harm to calls)")
    p.add_argument("--h2-drain", action="store_true",
                   help="in proxy mode, start the close of a plaintext HTTP/2 connection with a "
                        "GOAWAY (off by default: grpcio calls then wait until their deadline)")
    p.add_argument("--go-clients", default="", metavar="BINARY",
                   help="grpc-go clients from this goclients binary (make goclients-build prints "
                        "it) instead of grpcio's")
    p.add_argument("--failfast", type=int, default=None,
                   help="how many clients have no retry policy (default: half; the others "
                        "retry by connbalance_sim.retrypolicy)")
    p.add_argument("--verbose", action="store_true", help="log each run's loads on stderr")
    return p


def scenario_from(args: argparse.Namespace) -> Scenario:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"net": args.net, "agent_mode": agent_mode(args.agent_mode),
                               "metrics": args.metrics, "go_clients": args.go_clients,
                               "refusal": args.refusal, "h2_drain": args.h2_drain}
    for field in ("servers", "clients", "seed", "duration"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    # Two kinds of client, reported apart: half fail fast unless told otherwise.
    clients = changes.get("clients", base.clients)
    changes["failfast"] = clients // 2 if args.failfast is None else args.failfast
    changes["client_processes"] = client_processes_for(clients)
    servers = changes.get("servers", base.servers)
    changes["restarts"] = servers if args.restarts is None else args.restarts
    return replace(base, **changes)


def document(scenario: Scenario, records: Sequence[Record], *, wall: float) -> dict[str, Any]:
    return {
        # The binary's name, not where it is: the document may be kept in docs/.
        "scenario": {**scenario.to_json(), "go_clients": Path(scenario.go_clients).name,
                     "wall_seconds": round(wall, 1), "machine": machine()},
        "results": [{**measures.result(r), **harm.result(r.extra.get("harm"))}
                    for r in records],
    }


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


async def _batch(scenario: Scenario, names: Sequence[str], *, verbose: bool) -> list[Record]:
    """Run these strategies side by side, each on its own addresses."""

    async def one(block: int, name: str) -> Record:
        # Staggered: a fleet's processes starting all at once would starve each other.
        await asyncio.sleep(STAGGER * block)
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        view = PlainView(out=sys.stderr, prefix=f"  [{name}] ") if verbose else None
        record = await run_scenario(replace(scenario, block=block), FACTORIES[name](), view=view)
        print(f"bench: {name}: {json.dumps(measures.result(record))}", file=sys.stderr,
              flush=True)
        return record

    return list(await asyncio.gather(*(one(i, n) for i, n in enumerate(names))))


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.matrix:
        return matrix.run(args, base=scenario_from(args), machine=machine(),
                          result_of=lambda s, r: document(s, [r], wall=0.0)["results"][0])
    chosen = args.strategies or ",".join(
        n for n in NAMES if not (args.quick and n == "connbalance-uniform"))
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in FACTORIES]
    if unknown or not names:
        print(f"connbalance bench: unknown strategy {unknown[0] if unknown else '(none)'}; "
              f"choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    scenario = scenario_from(args)
    if scenario.servers < 2 or not 1 <= scenario.restarts <= scenario.servers:
        print("connbalance bench: needs 2 servers or more and 1 <= restarts <= servers",
              file=sys.stderr)
        return 2
    if scenario.go_clients and not os.access(scenario.go_clients, os.X_OK):
        print(f"connbalance bench: --go-clients {scenario.go_clients} is not an executable "
              "(make goclients-build prints the path)", file=sys.stderr)
        return 2
    if not 0 <= scenario.failfast <= scenario.clients:
        print("connbalance bench: --failfast must be between 0 and --clients", file=sys.stderr)
        return 2
    parallel = args.parallel or 1
    if not 1 <= parallel <= 8:
        print("connbalance bench: --parallel must be between 1 and 8", file=sys.stderr)
        return 2
    started, load_at_start = time.monotonic(), os.getloadavg()
    records: list[Record] = []
    for first in range(0, len(names), parallel):
        batch = names[first:first + parallel]
        records += asyncio.run(_batch(scenario, batch, verbose=args.verbose))
    doc = document(replace(scenario, block=0), records, wall=time.monotonic() - started)
    doc["scenario"]["parallel"] = parallel
    for entry, record in zip(doc["results"], records, strict=True):
        entry |= bounds.result(record, scenario)
    # Figures from a shared machine mean little without how busy it was.
    doc["scenario"]["load_average"] = {
        "start": [round(x, 2) for x in load_at_start],
        "end": [round(x, 2) for x in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "bench.md").write_text(benchdocs.table(doc))
    docs_key = benchdocs.update(Path("docs"), doc) if args.docs else None
    try:
        from connbalance_sim import plot  # matplotlib comes with the sim extra
    except ImportError:
        print("no plot: matplotlib is missing (pip install 'connbalance[sim]')",
              file=sys.stderr)
    else:
        plot.save_panels(records, args.out / "bench.png")
        if docs_key is not None:
            plot.save_panels(records, benchdocs.plot_path(Path("docs"), docs_key))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(benchdocs.table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
