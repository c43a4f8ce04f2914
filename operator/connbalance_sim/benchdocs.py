"""What the bench writes as Markdown: its table, and docs/bench.md with one section per run kind.

``connbalance bench --docs`` keeps the last JSON document of each kind of run in
``docs/bench.json``, keyed by agent mode (``proxy``, ``reset``; ``<mode>-go`` for runs with grpc-go
clients). It replaces the entry of the kind it ran and writes the page again from all of them, so a
run in one mode leaves the other's figures alone. Each section's plot is ``docs/bench.png``
(proxy) or ``docs/bench-<key>.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

ORDER: Final = ("proxy", "reset", "proxy-go", "reset-go")

HOW: Final[Mapping[str, str]] = {
    "proxy": (
        "The agent in proxy mode, in front of each server: the balancer sends it the traffic, "
        "it closes chosen connections with a FIN at a quiet moment, and while its pod steers "
        "it refuses new connections at its own listener: by default it closes the listener for "
        "the window, so the kernel refuses each connect, which this balancer (as an NLB) "
        "passes on as a reset; `--refusal reset` accepts and resets (the default when the "
        "proxy rows were made, and the same cost here), and `--refusal auto` answers a "
        "plaintext HTTP/2 client with SETTINGS then GOAWAY (see Harm to calls)."
    ),
    "reset": (
        "The agent in reset mode, out of the data path, as beside an unmodified Teleport: the "
        "balancer dials each server directly, and the agent destroys the server's own sockets "
        "(SOCK_DESTROY), so a cycled client sees a reset rather than a FIN. While its pod "
        "steers, the agent adds a self-expiring nftables element on its pod's address and port: "
        "the kernel answers the balancer's SYNs to that server with a reset, and the balancer "
        "resets the client, which dials again and lands elsewhere. The balancer's health check "
        "goes to the metrics port, as a readiness probe goes to Teleport's diag port, so a "
        "steering pod stays in the pool."
    ),
}

COLUMNS: Final = (
    "Columns: *balanced after* runs from the finished rollout until max/mean stays at or "
    "under 1.10 to the end (a strategy that only wanders under it near the end gets a "
    "late time by luck); *needed* is the load above the mean when the rollout finished; "
    "*cycled* counts connections closed on purpose from the start of the rollout (the "
    "restarts' own excluded); *churn when balanced* counts closes ordered while the pool "
    "was already balanced. Each table comes from one run, on a machine that may be shared (the "
    "load average is given beside it): a strategy that only wanders around 1.10 (max-age, "
    "random-reconnect) can land either side of it from one run to the next."
)


def table(doc: Mapping[str, Any]) -> str:
    rows = ["| strategy | balanced after | cycled | needed | cycled/needed | failed calls "
            "| final skew | churn when balanced |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        ttb = "never" if r["time_to_balance_s"] is None else f"{r['time_to_balance_s']:.1f} s"
        ratio = "-" if r["cycled_ratio"] is None else f"{r['cycled_ratio']:.2f}"
        rows.append(f"| {r['strategy']} | {ttb} | {r['cycled']} | {r['needed']} | {ratio} "
                    f"| {_failed(r)} | {r['final_skew']:.2f} "
                    f"| {r['churn_when_balanced']} |")
    s = doc["scenario"]
    rows.append("")
    rows.append(f"{s['servers']} servers, {s['clients']} {_clients(s)}, rolling restart of "
                f"{s['restarts']}, {s['duration']:g} s after it, seed {s['seed']}, agent in "
                f"{s['agent_mode']} mode; {s['machine']}, {_load(s)}; "
                f"{s['wall_seconds']:g} s in all.")
    return "\n".join(rows) + "\n"


def _failed(result: Mapping[str, Any]) -> str:
    """The failed calls, and each client group's share when the run counted them apart."""
    groups = result.get("groups")
    if not groups:
        return str(result["failed_calls"])
    shares = ", ".join(f"{GROUP_NAMES.get(name, name)} {groups[name]['failed_calls']}"
                       for name in sorted(groups))
    return f"{result['failed_calls']} ({shares})"


GROUP_NAMES: Final = {"failfast": "fail-fast", "retry": "retry"}


def _clients(scenario: Mapping[str, Any]) -> str:
    if not scenario.get("go_clients"):
        return "grpcio clients"
    failfast = int(scenario.get("failfast", 0))
    return f"grpc-go clients ({failfast} fail-fast, the others with the retry policy)"


def _load(scenario: Mapping[str, Any]) -> str:
    load = scenario.get("load_average")
    if not load:
        return "load average not recorded"
    return (f"load average {load['start'][0]:.2f} (1 min) at the start, "
            f"{load['end'][0]:.2f} at the end")


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
  in bounded steps measured one after the other, and stops once balanced. It is scheduled as the
  operator schedules it (`connbalance.kube.loops`): a reconcile, then a sleep for as long as the
  controller asks, cut short when the pool changes (a pod comes, goes or flips Ready, the
  rollout finishes), so its times are the operator's. The agent of each
  shedding pod refuses new connections for the drain window (at its listener in proxy mode,
  with a self-expiring nftables element in reset mode), so a cycled client's retry lands on
  another pod: each cycled connection moves about once, in either mode, at the price of a
  refused attempt for the clients whose retry hashed to a shedding pod. A reset refusal (the
  kernel's in reset mode, and the proxy's for TLS clients) sends the client's gRPC channel into
  TRANSIENT_FAILURE to wait out its backoff, and its fail-fast calls made meanwhile fail; the
  proxy's GOAWAY refusal for plaintext HTTP/2 costs no backoff and no call. Each failed call's
  cause is counted: see Harm to calls.
- **connbalance-steer**: the same plan, steered at the balancer instead (a readiness gate takes
  the shedding pod out of the endpoints for the window): no refused attempts at all.
- **connbalance-uniform** (`steering: none`): reconnects land anywhere, the shedding pods included,
  so the plan solves for where they land; that costs about 2.4 to 3 times the excess.

Proxy and reset mode: the connbalance rows cycle the same share of the excess in both (0.94,
0.94, and 2.75 and 2.86 times it for connbalance-uniform) and balance in the same time (5.3 s),
so kernel steering does in reset mode what the proxy's listener does. In both, steering by the
agent costs calls that steering at the balancer does not (35 and 38 failed against 2 and 4,
most of them fail-fast clients meeting a refused connect; see Harm to calls). The few failures
that come with unsteered closes (max-age, connbalance-uniform) are calls in flight when their
connection ended: grpc-go clients report them as `Unavailable: error reading from server: EOF`.
"""


def key(doc: Mapping[str, Any]) -> str:
    scenario = doc["scenario"]
    return str(scenario["agent_mode"]) + ("-go" if scenario.get("go_clients") else "")


def plot_path(docs: Path, doc_key: str) -> Path:
    return docs / ("bench.png" if doc_key == "proxy" else f"bench-{doc_key}.png")


def update(docs: Path, doc: Mapping[str, Any]) -> str:
    """Keep ``doc`` under its key in ``docs/bench.json``, write ``docs/bench.md`` from all the
    documents there, and return the key."""
    store = docs / "bench.json"
    docs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    doc_key = key(doc)
    runs[doc_key] = doc
    ordered = {k: runs[k] for k in [*ORDER, *sorted(set(runs) - set(ORDER))] if k in runs}
    store.write_text(json.dumps(ordered, indent=2) + "\n")
    old_page = (docs / "bench.md").read_text() if (docs / "bench.md").exists() else ""
    (docs / "bench.md").write_text(page(ordered) + _kept(old_page))
    return doc_key


# Sections written by another command (the scenario matrix, from bench --matrix) or by hand
# from runs of their own: carried over as they are, at the end.
KEPT: Final = ("## Scenario matrix", "## At 5 servers and 3,000 clients", "## Harm to calls")


def _kept(old_page: str) -> str:
    kept = []
    for heading in KEPT:
        start = old_page.find(f"\n{heading}\n")
        if start < 0:
            continue
        end = old_page.find("\n## ", start + 1)
        # Up to the newline before the next heading: the next section brings its own, so
        # one blank line stays one however often the page is written again.
        kept.append(old_page[start:] if end < 0 else old_page[start:end])
    return "".join(kept)


def page(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """docs/bench.md: how it was made, a table per kind of run, and why each strategy behaves as
    it does."""
    parts = [
        "# Benchmark: strategies after a rolling restart\n\n"
        "Made by `make bench` (`connbalance bench --json`). `connbalance bench --docs` keeps "
        "its figures in `docs/bench.json` under its agent mode and writes this page and the "
        "mode's plot; run it once as it is and once with `--agent-mode reset`. "
        "Each strategy runs the same scenario in turn on loopback: real grpcio servers, each on "
        "a loopback address of its own beside its agent, a flow-hash balancer, one connection "
        "per client, a rolling restart of every server.\n"
    ]
    for doc_key, doc in runs.items():
        mode = str(doc["scenario"]["agent_mode"])
        title = f"Agent in {mode} mode" + (", grpc-go clients" if doc_key.endswith("-go") else "")
        parts.append(f"## {title}\n\n{HOW.get(mode, '')}\n\n{table(doc)}\n"
                     f"![load per pod over time: {title}]({plot_path(Path(), doc_key).name})\n")
    parts.append(COLUMNS + "\n")
    parts.append(WHY)
    return "\n".join(parts)
