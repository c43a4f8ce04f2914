"""The strategies the bench compares. Every close goes through the pod's agent (a FIN in proxy
mode, a reset in reset mode), except random-reconnect's, which the clients make themselves.

- ``none``: what happens today: nothing.
- ``max-age``: every connection is closed at a fixed age with +-10% jitter (gRPC's
  MaxConnectionAge, Envoy's max_connection_duration); the age is a third of the scenario's run.
- ``random-reconnect``: each client redials after a random time (uniform 0.5-1.5 x a third of
  the run).
- ``piko``: a pod above 1.2 x mean sheds 0.5% of its connections per second (piko's rebalance
  threshold and shed rate).
- ``wazuh``: when max/mean exceeds 1 + 0.1, pods above the mean close a chunk of their excess
  while every pod but the idlest is out of rotation, so reconnects land on the idle one.
- ``connbalance``, ``connbalance-steer`` and ``connbalance-uniform``: the real controller and
  planner, through the local Fleet and Actuator, scheduled by the operator's own loop
  (``operatorloop``): steering by the agent (the default: at its listener in proxy mode, with
  nftables in reset mode), by the balancer, or none.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from connbalance.controller import Controller, ControllerState, TickResult
from connbalance.model import PodName, Policy, PolicyName
from connbalance_sim.fleet import LocalActuator, Pod
from connbalance_sim.operatorloop import run_controller
from connbalance_sim.scenario import Context, Scenario, Strategy

TICK: Final = 0.25


class Nothing:
    name = "none"

    def reconnect_mean(self, scenario: Scenario) -> float | None:
        return None

    async def run(self, ctx: Context) -> None:
        await asyncio.Event().wait()


class RandomReconnect(Nothing):
    name = "random-reconnect"

    def reconnect_mean(self, scenario: Scenario) -> float | None:
        return scenario.duration / 3

    async def run(self, ctx: Context) -> None:
        ctx.clients.start_reconnecting()
        await asyncio.Event().wait()


def _close_soon(ctx: Context, pod: Pod, ids: Sequence[str], tasks: set[asyncio.Task[Any]],
                *, reason: str) -> None:
    if not ids:
        return
    ctx.log("close", pod.name, f"{pod.name}: closing {len(ids)} ({reason})", count=len(ids))
    task = asyncio.create_task(pod.agent.close(list(ids), graceful=True, quiet_millis=100,
                                               deadline_seconds=5.0))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


class MaxAge(Nothing):
    name = "max-age"

    async def run(self, ctx: Context) -> None:
        age = ctx.scenario.duration / 3
        tasks: set[asyncio.Task[Any]] = set()
        closing: set[str] = set()
        while True:
            now = time.monotonic()
            for pod in ctx.fleet.pods():
                due = [c.id for c in pod.agent.connections()
                       if c.opened_at is not None and f"{pod.uid}/{c.id}" not in closing
                       and now - c.opened_at >= age * _jitter(f"{pod.uid}/{c.id}")]
                closing.update(f"{pod.uid}/{c}" for c in due)
                _close_soon(ctx, pod, due, tasks, reason=f"older than {age:.0f}s +-10%")
            await asyncio.sleep(TICK)


def _jitter(key: str) -> float:
    """A fixed factor in [0.9, 1.1] per connection, as servers draw one per connection."""
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return 0.9 + 0.2 * int.from_bytes(digest, "big") / 0xFFFFFFFF


class Piko(Nothing):
    name = "piko"
    threshold = 1.2
    rate = 0.005  # of a pod's connections per second

    async def run(self, ctx: Context) -> None:
        credit: dict[str, float] = {}
        tasks: set[asyncio.Task[Any]] = set()
        while True:
            await asyncio.sleep(1.0)
            sample = ctx.latest
            if sample is None or sample.mean <= 0:
                continue
            for pod in ctx.fleet.pods():
                load = sample.loads.get(pod.name)
                if load is None or load <= self.threshold * sample.mean:
                    credit.pop(pod.uid, None)
                    continue
                credit[pod.uid] = credit.get(pod.uid, 0.0) + self.rate * load
                count = int(credit[pod.uid])
                if count:
                    credit[pod.uid] -= count
                    ids = [c.id for c in _idlest(pod)[:count]]
                    _close_soon(ctx, pod, ids, tasks, reason="above 1.2 x mean")


def _idlest(pod: Pod) -> list[Any]:
    return sorted(pod.agent.connections(), key=lambda c: -c.idle_seconds)


class Wazuh(Nothing):
    name = "wazuh"
    tolerance = 0.1
    chunk = 0.5  # share of each pod's excess closed per round

    async def run(self, ctx: Context) -> None:
        tasks: set[asyncio.Task[Any]] = set()
        period = ctx.scenario.window + ctx.scenario.step_interval
        while True:
            await asyncio.sleep(period / 2)
            sample = ctx.latest
            if (sample is None or sample.skew is None or sample.skew <= 1 + self.tolerance
                    or len(sample.loads) < len(ctx.fleet.names)):
                continue
            mean = sample.mean
            idle = min(sample.loads, key=lambda p: sample.loads[p])
            room = mean - sample.loads[idle]
            over = {p: load - mean for p, load in sample.loads.items() if load > mean}
            total_over = sum(over.values())
            if room < 1 or total_over <= 0:
                continue
            until = ctx.clock() + ctx.scenario.window + 1.0
            for name in ctx.fleet.names:
                if name != idle:
                    ctx.balancer.steer_off(name, until=until)
            for shedding, excess in over.items():
                pod = ctx.fleet.pod(PodName(shedding))
                if pod is None:
                    continue
                count = max(1, math.floor(min(excess * self.chunk,
                                              room * excess / total_over)))
                ids = [c.id for c in _idlest(pod)[:count]]
                _close_soon(ctx, pod, ids, tasks, reason=f"chunk towards {idle}")
            await asyncio.sleep(period / 2)


class Connbalance(Nothing):
    """The operator's core: the same Controller and planner as in a cluster.

    ``connbalance`` runs the product's defaults: the agent of a shedding pod refuses new
    connections for the window, so a cycled client's retry goes elsewhere. ``connbalance-steer``
    steers at the balancer instead (a readiness gate: the pod leaves the endpoints for the window).
    ``connbalance-uniform`` turns steering off: reconnects land anywhere, the shedding pod included.
    """

    def __init__(self, *, steer: bool, via_balancer: bool, name: str) -> None:
        self.steer = steer
        self.via_balancer = via_balancer
        self.name = name

    def policy(self, scenario: Scenario) -> Policy:
        return Policy.from_spec({
            "selector": {"matchLabels": {"app": "sim"}},
            "metrics": {"maxStalenessSeconds": 10},
            "balance": {"settleSeconds": scenario.settle,
                        "stepIntervalSeconds": scenario.step_interval,
                        "maxFractionPerStep": scenario.max_fraction,
                        "maxPoolFractionPerStep": scenario.max_fraction},
            "actuation": {"windowSeconds": scenario.window, "quietMillis": 100,
                          "deadlineSeconds": scenario.window + 5,
                          "steering": "agent" if self.steer else "none"},
        })

    async def run(self, ctx: Context) -> None:
        sink = _Events(ctx)
        actuator = LocalActuator(
            fleet=ctx.fleet, balancer=ctx.balancer, steer=self.via_balancer, clock=ctx.clock,
            on_deliver=lambda pod, req: ctx.log("drain", pod, f"drain {pod}: {req.count}",
                                                count=req.count))
        controller = Controller(name=PolicyName("sim/fleet"), policy=self.policy(ctx.scenario),
                                loads=ctx.loads, fleet=ctx.fleet, actuator=actuator, events=sink,
                                clock=ctx.clock)

        def told(result: TickResult, before: ControllerState) -> None:
            if result.state.phase != before.phase:
                ctx.log("phase", "", f"phase {result.state.phase.value}: {result.state.reason}")
            ctx.status["phase"] = result.state.phase.value

        await run_controller(controller.tick, on_result=told, fleet=ctx.fleet)


class _Events:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def emit(self, *, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self._ctx.log("event", "", f"{kind} {reason}: {message}")


FACTORIES: Final[dict[str, Callable[[], Strategy]]] = {
    "none": Nothing,
    "max-age": MaxAge,
    "random-reconnect": RandomReconnect,
    "piko": Piko,
    "wazuh": Wazuh,
    "connbalance": lambda: Connbalance(steer=True, via_balancer=False, name="connbalance"),
    "connbalance-steer": lambda: Connbalance(steer=True, via_balancer=True,
                                             name="connbalance-steer"),
    "connbalance-uniform": lambda: Connbalance(steer=False, via_balancer=False,
                                               name="connbalance-uniform"),
}
NAMES: Final = tuple(FACTORIES)
