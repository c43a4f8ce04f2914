"""``connbalance bench``: the same scenario for each strategy in turn, side by side.

Writes one JSON document (stdout with ``--json``; always ``OUT/bench.json``), one PNG with a panel
per strategy (``OUT/bench.png``) and a Markdown table (``OUT/bench.md``); ``--docs`` also copies
the table and the plot to ``docs/``. Progress goes to stderr, so stdout stays one document.

Field meanings: ``needed`` is the load above the mean when the rollout finished; ``cycled`` the
connections closed on purpose from the start of the rollout to the end (restarts excluded);
``time_to_balance_s`` runs from the finished rollout until max/mean stays at or under 1.10 for
the rest of the run (null if it never does); ``churn_when_balanced`` counts closes made while
the pool was already balanced.
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
from typing import Any, Final

from connbalance_sim import measures
from connbalance_sim.fleet import AGENT_MODES, agent_mode
from connbalance_sim.measures import Record
from connbalance_sim.report import PlainView
from connbalance_sim.scenario import Scenario
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
    p.add_argument("--quick", action="store_true", help="a small run, under 90 s in all")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated, from {', '.join(NAMES)} (default: all; with --quick "
                        "all but connbalance-uniform, to keep the side-by-side run light)")
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out)")
    p.add_argument("--docs", action="store_true", help="also write docs/bench.md, docs/bench.png")
    p.add_argument("--net", default="127.0.7", help="the /24 (first three octets) to use")
    p.add_argument("--parallel", type=int, default=None,
                   help="strategies run side by side (default 1; all with --quick)")
    p.add_argument("--metrics", choices=("scrape", "prometheus"), default="scrape",
                   help="how the controller reads load: each pod's /metrics directly (default), "
                        "or a real Prometheus scraping them (Debian's, from make system-deps)")
    p.add_argument("--agent-mode", choices=AGENT_MODES, default="proxy",
                   help="proxy (default), reset (needs CAP_NET_ADMIN), or auto")
    p.add_argument("--verbose", action="store_true", help="log each run's loads on stderr")
    return p


def scenario_from(args: argparse.Namespace) -> Scenario:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"net": args.net, "agent_mode": agent_mode(args.agent_mode),
                               "metrics": args.metrics}
    for field in ("servers", "clients", "seed", "duration"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    servers = changes.get("servers", base.servers)
    changes["restarts"] = servers if args.restarts is None else args.restarts
    return replace(base, **changes)


def document(scenario: Scenario, records: Sequence[Record], *, wall: float) -> dict[str, Any]:
    return {
        "scenario": {**scenario.to_json(), "wall_seconds": round(wall, 1),
                     "machine": machine()},
        "results": [measures.result(r) for r in records],
    }


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def table(doc: dict[str, Any]) -> str:
    rows = ["| strategy | balanced after | cycled | needed | cycled/needed | failed calls "
            "| final skew | churn when balanced |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        ttb = "never" if r["time_to_balance_s"] is None else f"{r['time_to_balance_s']:.1f} s"
        ratio = "-" if r["cycled_ratio"] is None else f"{r['cycled_ratio']:.2f}"
        rows.append(f"| {r['strategy']} | {ttb} | {r['cycled']} | {r['needed']} | {ratio} "
                    f"| {r['failed_calls']} | {r['final_skew']:.2f} "
                    f"| {r['churn_when_balanced']} |")
    s = doc["scenario"]
    rows.append("")
    rows.append(f"{s['servers']} servers, {s['clients']} clients, rolling restart of "
                f"{s['restarts']}, {s['duration']:g} s after it, seed {s['seed']}, agent in "
                f"{s['agent_mode']} mode; "
                f"{s['machine']}; {s['wall_seconds']:g} s in all.")
    return "\n".join(rows) + "\n"


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


WHY: Final = """\
Why each behaves as it does:

- **none**: an L4 balancer (NLB flow hash, kube-proxy) never moves an established connection.
  Clients of each restarted pod reconnect to the pods still up, and the last pod restarted comes
  back nearly empty; nothing moves them back until the clients themselves restart.
- **max-age** (gRPC MaxConnectionAge, Envoy max_connection_duration): cycles every connection on
  a schedule, skewed or not. Each reconnect lands at random, so the pool only ever gets a random
  spread (about the square root of the load per pod either way), the cost grows with time and
  not with the skew, and connections opened together are closed together, in waves. Most of
  what it cycles is churn on a pool that was already balanced.
- **random-reconnect**: the same from the client side: random landings, constant churn, and a
  spread that keeps wandering around the 1.10 bound instead of settling under it.
- **piko** (shed above 1.2 x mean at 0.5% per second): stops at 20% over the mean, above the
  1.10 bound, and sheds so slowly that after a rolling restart the gap closes over minutes; its
  reconnects land uniformly, a third of them back on the pod that shed them.
- **wazuh** (tolerance 0.1, chunks, the other backends drained): aims reconnects by taking
  every backend but the idlest out of rotation while a chunk reconnects, so most closes move a
  client where it is needed. It rounds in fixed chunks and re-aims at whichever pod is idlest,
  and in a real cluster taking all but one backend out sends every new client to one pod.
- **connbalance** (the defaults): plans the fewest closes that bring max/mean within tolerance,
  in bounded steps measured one after the other, and stops once balanced. The agent of each
  shedding pod refuses new connections for the drain window, so a cycled client's retry lands
  on another pod: each cycled connection moves about once, at the price of one refused attempt
  for the clients whose retry hashed to a shedding pod. A gRPC client fails the calls it makes
  while its channel waits out that backoff, hence the failed calls: clients with a retry policy
  or wait-for-ready see none, others can set `steer: false` or steer at the balancer.
- **connbalance-steer**: the same plan, steered at the balancer instead (a readiness gate takes
  the shedding pod out of the endpoints for the window): no refused attempts at all.
- **connbalance-uniform** (`steer: false`): reconnects land anywhere, the shedding pods included,
  so the plan solves for where they land; that costs about 2.4 to 3 times the excess.
"""


def docs_page(doc: dict[str, Any]) -> str:
    """docs/bench.md: the table, how it was made, and why each strategy behaves as it does."""
    return (
        "# Benchmark: strategies after a rolling restart\n\n"
        "Made by `make bench` (`connbalance bench --json`, then `--docs` to write this page and "
        "`docs/bench.png`). Each strategy runs the same scenario in turn on loopback: real "
        "grpcio servers with the agent in proxy mode in front of each, a flow-hash balancer, "
        "one connection per client, a rolling restart of every server.\n\n"
        + table(doc) + "\n"
        "Columns: *balanced after* runs from the finished rollout until max/mean stays at or "
        "under 1.10 to the end (a strategy that only wanders under it near the end gets a "
        "late time by luck); *needed* is the load above the mean when the rollout finished; "
        "*cycled* counts connections closed on purpose from the start of the rollout (the "
        "restarts' own excluded); *churn when balanced* counts closes made while the pool was "
        "already balanced. Figures come from one run, on a machine that may be shared: a "
        "strategy that only wanders around 1.10 (max-age, random-reconnect) can land either "
        "side of it from one run to the next.\n\n" + WHY
    )


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
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
    # All side by side, --quick stays well under 90 s even on a busy 2-core machine.
    parallel = args.parallel or (len(names) if args.quick else 1)
    if not 1 <= parallel <= 8:
        print("connbalance bench: --parallel must be between 1 and 8", file=sys.stderr)
        return 2
    started = time.monotonic()
    records: list[Record] = []
    for first in range(0, len(names), parallel):
        batch = names[first:first + parallel]
        records += asyncio.run(_batch(scenario, batch, verbose=args.verbose))
    doc = document(replace(scenario, block=0), records, wall=time.monotonic() - started)
    doc["scenario"]["parallel"] = parallel
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "bench.md").write_text(table(doc))
    if args.docs:
        Path("docs").mkdir(exist_ok=True)
        Path("docs/bench.md").write_text(docs_page(doc))
    try:
        from connbalance_sim import plot  # matplotlib comes with the sim extra
    except ImportError:
        print("no plot: matplotlib is missing (pip install 'connbalance[sim]')",
              file=sys.stderr)
    else:
        plot.save_panels(records, args.out / "bench.png")
        if args.docs:
            plot.save_panels(records, Path("docs/bench.png"))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
