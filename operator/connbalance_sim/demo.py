"""``connbalance demo``: the whole story on loopback, in about a minute.

Three servers and 300 clients behind a flow-hash balancer; a rolling restart leaves the skew;
the operator's core (the real controller and planner) removes it. Shows a live view (or plain
lines with ``--no-tty``), then a summary, and writes a plot of load per pod over time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console

from connbalance_sim import report
from connbalance_sim.fleet import AGENT_MODES, agent_mode
from connbalance_sim.scenario import Scenario, View
from connbalance_sim.scenario import run as run_scenario
from connbalance_sim.strategies import FACTORIES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="connbalance demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=3, help="server pods (default 3)")
    p.add_argument("--clients", type=int, default=300, help="clients, one connection each")
    p.add_argument("--restarts", type=int, default=None,
                   help="pods restarted one at a time (default: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=40.0,
                   help="seconds to watch after the rollout finished (default 40)")
    p.add_argument("--strategy", choices=sorted(FACTORIES), default="connbalance",
                   help="what acts after the rollout (default connbalance; try "
                        "connbalance-steer, or none to see today's behaviour)")
    p.add_argument("--plot", type=Path, default=Path("out/demo.png"),
                   help="where to write the plot (default out/demo.png)")
    p.add_argument("--docs", action="store_true", help="also write docs/demo.png")
    p.add_argument("--metrics", choices=("scrape", "prometheus"), default="scrape",
                   help="how the controller reads load: each pod's /metrics directly (default), "
                        "or a real Prometheus scraping them (Debian's, from make system-deps)")
    p.add_argument("--agent-mode", choices=AGENT_MODES, default="proxy",
                   help="the agent in front of each server (proxy), or out of the data path "
                        "(reset: needs CAP_NET_ADMIN, and nft to steer); auto picks reset where "
                        "it works")
    p.add_argument("--no-tty", action="store_true", help="plain log lines instead of a live view")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.servers < 2 or args.clients < args.servers:
        print("connbalance demo: needs at least 2 servers and a client per server",
              file=sys.stderr)
        return 2
    restarts = args.servers if args.restarts is None else args.restarts
    if not 1 <= restarts <= args.servers:
        print(f"connbalance demo: --restarts must be between 1 and {args.servers}",
              file=sys.stderr)
        return 2
    # Two kinds of client, as in the bench: half with the retry policy, half fail-fast.
    scenario = Scenario(servers=args.servers, clients=args.clients, restarts=restarts,
                        seed=args.seed, duration=args.duration, failfast=args.clients // 2,
                        agent_mode=agent_mode(args.agent_mode), metrics=args.metrics)
    strategy = FACTORIES[args.strategy]()
    console = Console()
    title = (f"connbalance demo: {args.servers} servers, {args.clients} clients, "
             f"rolling restart of {restarts}, then {strategy.name} "
             f"(agent in {scenario.agent_mode} mode, load read by {scenario.metrics})")
    if args.no_tty or not console.is_terminal:
        print(title, flush=True)
        record = asyncio.run(run_scenario(scenario, strategy, view=report.PlainView()))
    else:
        with report.LiveView(title=title, console=console) as live:
            view: View = live
            record = asyncio.run(run_scenario(scenario, strategy, view=view))
    print()
    for line in report.summary(record):
        print(line)
    try:
        from connbalance_sim import plot  # matplotlib comes with the sim extra
    except ImportError:
        print("no plot: matplotlib is missing (pip install 'connbalance[sim]')",
              file=sys.stderr)
        return 0
    targets = [args.plot] + ([Path("docs/demo.png")] if args.docs else [])
    for target in targets:
        plot.save_one(record, target)
        print(f"plot written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
