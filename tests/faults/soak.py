"""The soak: minutes of random rolling restarts, client churn and pod deletions against the
simulated pool on the test control plane, with the operator running throughout; one JSON
document at the end.

``python -m tests.faults.soak --minutes 20`` (``make soak``). It uses the cluster running at
``--cluster-run`` (default $CONNBALANCE_CLUSTER, else ``make cluster-up``'s) or, when none runs
there, starts a private one and stops it afterwards.

What it measures, each from the parts themselves:
- ``time_to_balance_s``: from the end of each disruption (rollout complete, pod replaced, clients
  reconnected) to the first moment the operator says Balanced and the agents' connection counts
  are within the tolerance;
- ``cycled`` against ``needed``: connections the agents say they closed, against the load above
  the mean when each disruption ended, summed over disruptions that left the pool skewed;
- ``drains_while_balanced``: requests issued while the agents' counts had been balanced, by the
  controller's own measure, for the 3 s before (must be 0). The measure is the controller's
  trigger for the request's step: an episode's first step (``cb.<episode>.1.<pod>``) acts above
  1 + tolerance, its later steps above 1 + targetTolerance (the hysteresis), so a later step at
  a skew of 1.07 is the episode finishing, not churn. Each one counted is listed with its step,
  the trigger and the skews seen before it, to be explained;
- ``failed_calls``: the clients' failed unary calls, all groups, churned ones included;
- the operator's resident memory at the start and the end, and the API requests it made per
  minute (counted by a pass-through proxy between it and the API server).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from connbalance.controller.state import step_of
from tests.cluster.cluster import Cluster, default_run_dir
from tests.e2e.scenario_kit import apply_crd
from tests.faults.kit import (
    Clients,
    Operator,
    Pool,
    agents_ledger,
    balancer_manifest,
    drain_annotations,
    kubectl,
    status,
)
from tests.kube.faultproxy import FaultProxy

TOLERANCE = 0.10
TARGET_TOLERANCE = 0.05
GROUP = 30  # clients per group; churn restarts one group
GROUPS = 3
LOOKBACK_SECONDS = 3.0
BALANCE_TIMEOUT = 240.0


def skew(loads: dict[str, int]) -> float:
    mean = sum(loads.values()) / len(loads) if loads else 0.0
    return max(loads.values()) / mean if mean else 0.0


def excess(loads: dict[str, int]) -> float:
    mean = sum(loads.values()) / len(loads) if loads else 0.0
    return sum(max(0.0, v - mean) for v in loads.values())


@dataclass
class Sampler:
    """The agents' counts and the pods' requests every half second, in a thread."""

    pool: Pool
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> request
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.pool.loads()))
            for request in drain_annotations(self.pool.pods()).values():
                self.requests.setdefault(request["id"], request)
            self._stop.wait(0.5)

    def skews_before(self, moment: float) -> list[float] | None:
        """The skews of the lookback before ``moment``; None when a pod was missing from one."""
        window = [s for t, s in self.samples if moment - LOOKBACK_SECONDS <= t <= moment]
        if not window or any(len(s) != GROUPS for s in window):
            return None
        return [round(skew(s), 3) for s in window]


def trigger_for(request_id: str) -> tuple[int, float]:
    """The step a request belongs to and the skew above which the controller acts at it."""
    named = step_of(request_id)
    step = named[1] if named is not None else 1
    return step, 1 + (TOLERANCE if step == 1 else TARGET_TOLERANCE)


def issued_while_balanced(sampler: Sampler) -> list[dict[str, Any]]:
    """The requests issued after a lookback balanced by their step's trigger, with why."""
    found = []
    for rid, request in sorted(sampler.requests.items()):
        if not request.get("issuedAt"):
            continue
        moment = datetime.fromisoformat(request["issuedAt"].replace("Z", "+00:00")).timestamp()
        skews = sampler.skews_before(moment)
        step, trigger = trigger_for(rid)
        if skews is not None and all(value <= trigger for value in skews):
            found.append({"id": rid, "step": step, "trigger": round(trigger, 2),
                          "count": request.get("count"), "skews_before": skews})
    return found


@dataclass
class Soak:
    cluster: Cluster
    minutes: float
    rollouts_limit: int | None
    rng: random.Random
    namespace: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:6]}")
    groups: list[Clients] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    timeouts: int = 0
    needed: float = 0.0
    actions: dict[str, int] = field(default_factory=lambda: {"rollout": 0, "churn": 0,
                                                              "delete": 0})

    def run(self) -> dict[str, Any]:
        load_start = os.getloadavg()
        apply_crd(self.cluster)
        kubectl(self.cluster, "create", "namespace", self.namespace)
        pool = Pool(self.cluster, self.namespace, clients=GROUP)
        proxy = FaultProxy(upstream=self.cluster.api_server,
                           pki=self.cluster.run_dir / "pki").start()
        logs = self.cluster.run_dir / "logs"
        operator = Operator(proxy.kubeconfig(logs / f"{self.namespace}.kubeconfig"),
                            self.namespace, logs / f"operator-{self.namespace}.log")
        sampler = Sampler(pool)
        try:
            pool.deploy()
            assert pool.swarm is not None
            self.groups = [pool.swarm]
            for index in range(1, GROUPS):
                self.groups.append(self._group(index))
            self._wait(lambda: sum(pool.loads().values()) == GROUP * GROUPS, 120)
            operator.start()
            kubectl(self.cluster, "apply", "-f", "-", stdin=balancer_manifest(
                self.namespace, self.cluster.prometheus_url,
                balance={"settleSeconds": 3, "stepIntervalSeconds": 3, "tolerance": TOLERANCE,
                         "targetTolerance": TARGET_TOLERANCE, "maxConnectionsPerStep": 100}))
            sampler.start()
            self._balanced(pool, sampler, since=time.time())
            rss_start = operator.rss_kib()
            started = time.time()
            requests_before = len(proxy.seen)
            while self._more(started):
                self._disrupt(pool, sampler)
                time.sleep(self.rng.uniform(5, 15))
            elapsed = time.time() - started
            rss_end = operator.rss_kib()
            api_requests = len(proxy.seen) - requests_before
        finally:
            sampler.stop()
            for group in self.groups[1:]:
                group.stop()
            pool.close()
            operator.kill()
            proxy.stop()
            kubectl(self.cluster, "delete", "namespace", self.namespace, "--wait=false",
                    check=False)
        return self._report(pool, sampler, elapsed=elapsed, rss=(rss_start, rss_end),
                            api_requests=api_requests, load=(load_start, os.getloadavg()))

    def _group(self, index: int) -> Clients:
        log = self.cluster.run_dir / "logs" / f"clients-{self.namespace}-{index}.log"
        group = Clients(self.groups[0].target, GROUP, log)
        group.start()
        return group

    def _more(self, started: float) -> bool:
        if self.rollouts_limit is not None:
            return self.actions["rollout"] < self.rollouts_limit
        return time.time() - started < self.minutes * 60

    def _disrupt(self, pool: Pool, sampler: Sampler) -> None:
        choice = "rollout" if self.rollouts_limit is not None else self.rng.choices(
            ["rollout", "churn", "delete"], weights=[2, 1, 1])[0]
        self.actions[choice] += 1
        if choice == "rollout":
            kubectl(self.cluster, "rollout", "restart", "deployment/auth", "-n", self.namespace)
            kubectl(self.cluster, "rollout", "status", "deployment/auth", "-n", self.namespace,
                    "--timeout=300s")
        elif choice == "delete":
            victim = self.rng.choice(sorted(pool.ready()))
            kubectl(self.cluster, "delete", "pod", victim, "-n", self.namespace,
                    "--timeout=120s")
            kubectl(self.cluster, "rollout", "status", "deployment/auth", "-n", self.namespace,
                    "--timeout=300s")
        else:
            index = self.rng.randrange(len(self.groups))
            group = self.groups[index]
            group.stop()
            replacement = Clients(group.target, GROUP, group.log.with_name(
                f"{group.log.stem}-{self.actions['churn']}.log"))
            replacement.start()
            self.groups.append(group)  # kept for its counters
            self.groups[index] = replacement
        # Every client back before the clock starts: the disruption is over.
        self._wait(lambda: sum(pool.loads().values()) >= 0.95 * GROUP * GROUPS
                   and len(pool.ready()) == GROUPS, 180)
        self._balanced(pool, sampler, since=time.time())

    def _balanced(self, pool: Pool, sampler: Sampler, *, since: float) -> None:
        first = pool.loads()
        if len(first) == GROUPS and skew(first) > 1 + TOLERANCE:
            self.needed += excess(first)
        deadline = since + BALANCE_TIMEOUT
        while time.time() < deadline:
            loads = pool.loads()
            if (status(self.cluster, self.namespace).get("phase") == "Balanced"
                    and len(loads) == GROUPS and skew(loads) <= 1 + TOLERANCE):
                self.times.append(time.time() - since)
                return
            time.sleep(0.5)
        self.timeouts += 1

    def _wait(self, check: Any, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise RuntimeError(f"soak: the pool did not recover within {timeout:.0f}s")

    def _report(self, pool: Pool, sampler: Sampler, *, elapsed: float, rss: tuple[int, int],
                api_requests: int, load: tuple[Any, Any]) -> dict[str, Any]:
        ledger = agents_ledger(pool.uids)
        cycled = sum(a.cycled for a in ledger)
        while_balanced = issued_while_balanced(sampler)
        counters = [g.counters() for g in self.groups]
        ordered = sorted(self.times)
        return {
            "minutes": round(elapsed / 60, 2),
            "rollouts": self.actions["rollout"],
            "actions": dict(self.actions),
            "time_to_balance_s": {
                "p50": round(statistics.median(ordered), 1) if ordered else None,
                "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
                if ordered else None,
                "max": round(ordered[-1], 1) if ordered else None,
                "count": len(ordered),
                "timeouts": self.timeouts,
            },
            "cycled": cycled,
            "needed": round(self.needed, 1),
            "cycled_per_needed": round(cycled / self.needed, 2) if self.needed else None,
            "drains": len(sampler.requests),
            "drains_while_balanced": len(while_balanced),
            "drains_while_balanced_detail": while_balanced,
            "failed_calls": sum(int(c.get("calls_failed", 0)) for c in counters),
            "calls": sum(int(c.get("calls_ok", 0)) + int(c.get("calls_failed", 0))
                         for c in counters),
            "operator_rss_mib": {"start": round(rss[0] / 1024, 1),
                                 "end": round(rss[1] / 1024, 1)},
            "api_requests_per_minute": round(api_requests / (elapsed / 60), 1)
            if elapsed else None,
            "load_average": {"start": [round(x, 2) for x in load[0]],
                             "end": [round(x, 2) for x in load[1]]},
            "cpus": os.cpu_count(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rollouts", type=int, default=None,
                        help="stop after this many rolling restarts (only rollouts), not minutes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster-run", type=Path,
                        default=Path(os.environ.get("CONNBALANCE_CLUSTER") or default_run_dir()))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    run_dir = args.cluster_run.expanduser().resolve()
    private = None
    if (run_dir / "state.json").exists():
        cluster = Cluster.load(run_dir)
    else:
        private = Cluster(run_dir=Path(tempfile.mkdtemp(prefix="connbalance-soak-")))
        private.start()
        cluster = private
    try:
        report = Soak(cluster=cluster, minutes=args.minutes, rollouts_limit=args.rollouts,
                      rng=random.Random(args.seed)).run()
    finally:
        if private is not None:
            private.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
