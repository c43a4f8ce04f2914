"""One scenario run: a fleet on loopback, clients, a rolling restart, a strategy, a record.

The runner starts the balancer, the pods and the client process, waits until every client holds
its stream, starts the strategy, restarts ``restarts`` pods one at a time, then lets the strategy
work for ``duration`` seconds. Load is sampled throughout by scraping each pod's metrics (the
same ``ScrapeLoadSource`` the controller reads), and every deliberate close is timed at the
balancer, which sees each connection end and knows whether its pod was still in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from connbalance.agent.proxy import DEFAULT_REFUSAL, Refusal
from connbalance.model import PodName
from connbalance.ports import LoadSource, MetricsError
from connbalance_sim import harm
from connbalance_sim.balancer import ConnectionEnd, FlowHashBalancer
from connbalance_sim.clientprocs import ClientProcesses
from connbalance_sim.fleet import START_TIMEOUT, LocalFleet
from connbalance_sim.measures import Event, Record, Sample
from connbalance_sim.prom import LocalPrometheus
from connbalance_sim.scrape import ScrapeLoadSource

# One grpcio client process keeps up with about this many clients on this machine; more go to
# more processes, so that thousands of clients measure the pool and not one starved process.
CLIENTS_PER_PROCESS = 600


def client_processes_for(clients: int) -> int:
    """How many client processes carry ``clients``: one per CLIENTS_PER_PROCESS, at least one."""
    return max(1, math.ceil(clients / CLIENTS_PER_PROCESS))


# What two cores carry beside the fleet they call: the whole fleet's unary calls per second.
# 1,200 clients pinging every 2 s make 600 a second, and the pods, the clients and the bench then
# took 1.2 cores (5 servers, reset mode, grpcio clients); a fleet that large or smaller pings as
# it always did, and a larger one pings less often, as a real Teleport agent heartbeats rarely.
FLEET_CALLS_PER_SECOND = 600.0
# How long a new pod may take to start and turn ready: the fleet's START_TIMEOUT, and a second
# for every START_CLIENTS_PER_SECOND clients it will be asked to take (the pool's clients over
# its pods), since those clients' reconnects load the machine the pod starts on.
START_CLIENTS_PER_SECOND = 20.0


@dataclass(frozen=True, slots=True)
class Scenario:
    servers: int = 3
    clients: int = 300
    restarts: int = 3
    seed: int = 1
    duration: float = 45.0  # seconds after the rollout finished
    pause: float = 2.0  # between two pod restarts
    warmup: float = 1.0
    ping: float = 2.0  # seconds between a client's unary calls, unless the fleet is large
    # The whole fleet's unary calls per second, at most: see ping_interval.
    max_fleet_calls: float = FLEET_CALLS_PER_SECOND
    backoff_ms: int = 100
    sample_interval: float = 0.5
    net: str = "127.0.6"  # a /24 of loopback, by its first three octets
    block: int = 0  # which 30 addresses of it: runs side by side use different blocks
    client_processes: int = 1
    # A goclients binary (tests/goclients, `make goclients-build`): grpc-go clients, as Teleport's
    # agents are, instead of grpcio's. In either fleet ``failfast`` of the clients have no retry
    # policy, the rest retry by connbalance_sim.retrypolicy.
    go_clients: str = ""
    failfast: int = 0
    agent_mode: str = "proxy"  # or reset (needs CAP_NET_ADMIN and SOCK_DESTROY)
    refusal: Refusal = DEFAULT_REFUSAL  # how a steering proxy refuses (connbalance.agent.proxy)
    h2_drain: bool = False  # whether the proxy's graceful close starts with an HTTP/2 GOAWAY
    metrics: str = "scrape"  # how the controller reads load: scrape, or prometheus (a real one)
    # The controller's timing, demo-sized.
    settle: float = 3.0
    step_interval: float = 3.0
    window: float = 2.0
    max_fraction: float = 0.5  # balance.maxFractionPerStep and maxPoolFractionPerStep

    def hosts(self) -> tuple[str, list[str]]:
        """The balancer's address and the pods' (one each, as pods have): NET.(10 + 30 x block)
        and the addresses after it."""
        base = 10 + 30 * self.block
        if self.servers > 28 or not 0 <= self.block <= 7:
            raise ValueError("at most 28 servers, in blocks 0 to 7")
        return f"{self.net}.{base}", [f"{self.net}.{base + 1 + i}" for i in range(self.servers)]

    def prometheus_host(self) -> str:
        return f"{self.net}.{10 + 30 * self.block + 29}"

    def ping_interval(self) -> float:
        """Seconds between one client's unary calls: ``ping``, or longer when the whole fleet
        would otherwise call more than ``max_fleet_calls`` times a second."""
        return max(self.ping, self.clients / self.max_fleet_calls)

    def start_timeout(self) -> float:
        """Seconds a new pod may take to start and turn ready before the run gives up on it."""
        return START_TIMEOUT + self.clients / self.servers / START_CLIENTS_PER_SECOND

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__},
                "ping_interval": self.ping_interval(), "start_timeout": self.start_timeout()}


class View(Protocol):
    """Who watches a run as it goes: the live view, plain log lines, or nobody."""

    def sample(self, sample: Sample, ctx: Context) -> None: ...

    def event(self, event: Event) -> None: ...


@dataclass(slots=True)
class Context:
    """What a strategy may use: the pool, the balancer, the latest load and a place to log."""

    scenario: Scenario
    fleet: LocalFleet
    balancer: FlowHashBalancer
    clients: ClientProcesses
    loads: LoadSource  # what the controller reads: a direct scrape, or a real Prometheus
    t0: float
    clock: Callable[[], float] = time.time
    latest: Sample | None = None
    status: dict[str, str] = field(default_factory=dict)  # e.g. phase, skew, for the view
    events: list[Event] = field(default_factory=list)
    view: View | None = None

    def now(self) -> float:
        return self.clock() - self.t0

    def log(self, kind: str, pod: str, text: str, count: int = 0) -> None:
        event = Event(t=self.now(), kind=kind, pod=pod, text=text, count=count)
        self.events.append(event)
        if self.view is not None:
            self.view.event(event)


class Strategy(Protocol):
    name: str

    def reconnect_mean(self, scenario: Scenario) -> float | None:
        """Seconds between a client's own reconnects (random-reconnect), or None."""
        ...

    async def run(self, ctx: Context) -> None:
        """Act until cancelled."""
        ...


async def run(scenario: Scenario, strategy: Strategy, *, view: View | None = None) -> Record:
    clock = time.time
    t0 = clock()
    cycled_at: list[float] = []
    opened_at: list[float] = []  # when each cycled connection had been opened

    def on_end(end: ConnectionEnd) -> None:
        # A connection a steering pod reset on arrival was refused, not cycled: its client
        # never had a stream on it (a gRPC server speaks first, so a served one carried bytes).
        if end.in_service and end.served:
            cycled_at.append(end.at - t0)
            opened_at.append(end.at - end.lifetime - t0)

    parts = _assemble(scenario, view=view, clock=clock, t0=t0, on_end=on_end)
    await parts.ctx.balancer.start()
    try:
        await _start(parts, strategy)
        outcome = await _roll_out(parts, strategy)
    finally:
        await _stop(parts)
    ctx = parts.ctx
    return Record(strategy=strategy.name, clients=scenario.clients, samples=tuple(parts.samples),
                  events=tuple(ctx.events),
                  cycled_at=tuple(t for t in cycled_at if t <= outcome.ended),
                  cycled_opened_at=tuple(o for t, o in zip(cycled_at, opened_at, strict=True)
                                         if t <= outcome.ended),
                  rollout_started=outcome.rollout_started,
                  rollout_finished=outcome.rollout_finished, ended=outcome.ended,
                  failed_calls=outcome.failed_calls, calls=outcome.calls,
                  refused=ctx.balancer.stats.refused, extra=outcome.held)


@dataclass(slots=True)
class _Parts:
    """Everything one run starts, so that all of it is stopped whatever happens."""

    ctx: Context
    timeline: ScrapeLoadSource  # the samples' own source, apart from what the controller reads
    scraper: ScrapeLoadSource  # what the controller reads, unless a real Prometheus is asked for
    prometheus: LocalPrometheus | None
    samples: list[Sample] = field(default_factory=list)
    sampler: asyncio.Task[None] | None = None
    acting: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    rollout_started: float
    rollout_finished: float
    ended: float
    failed_calls: int
    calls: int
    held: dict[str, Any]


def _assemble(scenario: Scenario, *, view: View | None, clock: Callable[[], float], t0: float,
              on_end: Callable[[ConnectionEnd], None]) -> _Parts:
    balancer_host, hosts = scenario.hosts()
    balancer = FlowHashBalancer(host=balancer_host, seed=scenario.seed, on_end=on_end,
                                clock=clock)
    fleet = LocalFleet(hosts=hosts, balancer=balancer, agent_mode=scenario.agent_mode,
                       clock=clock, refusal=scenario.refusal, h2_drain=scenario.h2_drain,
                       start_timeout=scenario.start_timeout())
    # The timeline is always scraped directly (fast, every half second); the controller reads
    # through the source chosen, a real Prometheus included.
    timeline = ScrapeLoadSource(targets=fleet.metrics_targets, clock=clock)
    prometheus = None
    if scenario.metrics == "prometheus":
        prometheus = LocalPrometheus(host=scenario.prometheus_host(),
                                     targets=fleet.metrics_targets)
    scraper = ScrapeLoadSource(targets=fleet.metrics_targets, clock=clock)
    ctx = Context(scenario=scenario, fleet=fleet, balancer=balancer, clients=ClientProcesses(),
                  loads=scraper, t0=t0, clock=clock, view=view)
    return _Parts(ctx=ctx, timeline=timeline, scraper=scraper, prometheus=prometheus)


async def _start(parts: _Parts, strategy: Strategy) -> None:
    """The pods, the sampling, the clients: returns once every client holds its stream."""
    ctx, scenario = parts.ctx, parts.ctx.scenario
    await ctx.fleet.start()
    if parts.prometheus is not None:
        await parts.prometheus.start()
        ctx.loads = parts.prometheus.load_source(clock=ctx.clock)
    for name in ctx.fleet.names:
        await ctx.fleet.wait_ready(name)
    parts.sampler = asyncio.create_task(_sample(ctx, parts.timeline, parts.samples))
    await ctx.clients.start(target=ctx.balancer.address, scenario=scenario,
                            reconnect_mean=strategy.reconnect_mean(scenario))
    await _wait_connected(ctx, scenario.clients, timeout=30.0 + scenario.clients / 20)
    await asyncio.sleep(scenario.warmup)


async def _roll_out(parts: _Parts, strategy: Strategy) -> _Outcome:
    """The strategy starts, the rolling restart runs, then the strategy works for ``duration``."""
    ctx, scenario, clients = parts.ctx, parts.ctx.scenario, parts.ctx.clients
    failed_before = clients.counter("calls_failed")
    calls_before = clients.counter("calls_ok") + failed_before
    harm_at_start = clients.harm()
    acting = parts.acting = asyncio.create_task(strategy.run(ctx))
    rollout_started = ctx.now()
    ctx.log("rollout", "", f"rolling restart of {scenario.restarts} pod(s) begins")
    await ctx.fleet.rolling_restart(
        ctx.fleet.names[: scenario.restarts], pause=scenario.pause,
        on_step=lambda pod, what: ctx.log("restart" if what == "restarting" else "ready",
                                          pod, f"{pod} {what}"))
    rollout_finished = ctx.now()
    harm_at_finish = clients.harm()
    ctx.log("rollout", "", "rollout finished")
    await asyncio.sleep(scenario.duration)
    if acting.done() and not acting.cancelled() and acting.exception() is not None:
        # A strategy that crashed must not pass for one that chose to do nothing.
        raise RuntimeError(f"strategy {strategy.name} failed") from acting.exception()
    ended = ctx.now()
    # Three views of the same fact, for the conservation check: streams the clients hold,
    # connections the agents proxy, streams the servers count (the last sample).
    held: dict[str, Any] = {
        "client_streams": clients.counter("streams"),
        "agent_connections": sum(p.agent.active_count() for p in ctx.fleet.pods()),
        # Failed calls by group and cause: the rollout's, then each cause after it.
        "harm": harm.summary(at_start=harm_at_start, at_finish=harm_at_finish,
                             at_end=clients.harm())}
    return _Outcome(
        rollout_started=rollout_started, rollout_finished=rollout_finished, ended=ended,
        failed_calls=clients.counter("calls_failed") - failed_before,
        calls=clients.counter("calls_ok") + clients.counter("calls_failed") - calls_before,
        held=held)


async def _stop(parts: _Parts) -> None:
    for task in (parts.acting, parts.sampler):
        if task is not None:
            await cancel_until_done(task)
    ctx = parts.ctx
    await ctx.clients.stop()
    await ctx.fleet.stop()
    await ctx.balancer.stop()
    await parts.timeline.close()
    await parts.scraper.close()
    if parts.prometheus is not None:
        await parts.prometheus.stop()


async def cancel_until_done(task: asyncio.Task[None], *, every: float = 1.0) -> None:
    """Cancel ``task`` until it ends. Once is not always enough: a cancellation that arrives
    just as a timeout fires inside the task can be lost (turned into the timeout's error, as
    ``asyncio.wait_for`` before Python 3.12 and timer contexts can, which the controller's loop
    then retries as a failed reconcile). With 3,000 clients, after this process had stalled for
    seconds, a strategy's task outlived its one cancellation and the run never ended."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def _sample(ctx: Context, source: ScrapeLoadSource, samples: list[Sample]) -> None:
    interval = ctx.scenario.sample_interval
    while True:
        started = ctx.clock()
        view = await ctx.fleet.observe()
        ready = [PodName(p.name) for p in view.pods if p.ready]
        try:
            loads = await source.read(pods=ready)
        except MetricsError:
            loads = {}  # a pod went away between the two reads: try again next time
        if loads:
            sample = Sample(t=started - ctx.t0, loads={str(p): m.load for p, m in loads.items()})
            samples.append(sample)
            ctx.latest = sample
            if ctx.view is not None:
                ctx.view.sample(sample, ctx)
        await asyncio.sleep(max(0.0, interval - (ctx.clock() - started)))


async def _wait_connected(ctx: Context, clients: int, *, timeout: float) -> None:
    deadline = ctx.now() + timeout
    while ctx.latest is None or ctx.latest.total < clients:
        if ctx.now() > deadline:
            have = 0 if ctx.latest is None else int(ctx.latest.total)
            raise TimeoutError(f"only {have} of {clients} clients connected in {timeout:g}s")
        await asyncio.sleep(0.1)
