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
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from connbalance.model import PodName
from connbalance.ports import LoadSource, MetricsError
from connbalance.scrape import ScrapeLoadSource
from connbalance.sim.balancer import ConnectionEnd, FlowHashBalancer
from connbalance.sim.fleet import LocalFleet
from connbalance.sim.measures import Event, Record, Sample
from connbalance.sim.prom import LocalPrometheus


@dataclass(frozen=True, slots=True)
class Scenario:
    servers: int = 3
    clients: int = 300
    restarts: int = 3
    seed: int = 1
    duration: float = 45.0  # seconds after the rollout finished
    pause: float = 2.0  # between two pod restarts
    warmup: float = 1.0
    ping: float = 2.0  # seconds between a client's unary calls
    backoff_ms: int = 100
    sample_interval: float = 0.5
    net: str = "127.0.6"  # a /24 of loopback, by its first three octets
    block: int = 0  # which 30 addresses of it: runs side by side use different blocks
    client_processes: int = 1
    agent_mode: str = "proxy"  # or reset (needs CAP_NET_ADMIN and SOCK_DESTROY)
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

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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


class ClientProcesses:
    """The client processes, and the sum of the counters they report."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._latest: dict[int, dict[str, Any]] = {}

    async def start(self, *, target: str, scenario: Scenario, reconnect_mean: float | None) -> None:
        share, extra = divmod(scenario.clients, scenario.client_processes)
        for index in range(scenario.client_processes):
            count = share + (1 if index < extra else 0)
            args = [sys.executable, "-m", "connbalance.sim.clients", "--target", target,
                    "--count", str(count), "--ping", str(scenario.ping),
                    "--backoff-ms", str(scenario.backoff_ms),
                    "--seed", str(scenario.seed * 1000 + index), "--report", "0.25",
                    "--lifetime", "3600"]
            if reconnect_mean is not None:
                args += ["--random-reconnect", str(reconnect_mean)]
            process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
            self._processes.append(process)
            self._readers.append(asyncio.create_task(self._read(index, process)))

    async def _read(self, index: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            with contextlib.suppress(ValueError):
                self._latest[index] = json.loads(line)

    def start_reconnecting(self) -> None:
        """Tell clients started with a reconnect mean to begin their random redials."""
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)

    def counter(self, key: str) -> int:
        return sum(int(c.get(key, 0)) for c in self._latest.values())

    async def stop(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def run(scenario: Scenario, strategy: Strategy, *, view: View | None = None) -> Record:
    clock = time.time
    t0 = clock()
    cycled_at: list[float] = []

    def on_end(end: ConnectionEnd) -> None:
        # A connection a steering pod reset on arrival was refused, not cycled: its client
        # never had a stream on it (a gRPC server speaks first, so a served one carried bytes).
        if end.in_service and end.served:
            cycled_at.append(end.at - t0)

    balancer_host, hosts = scenario.hosts()
    balancer = FlowHashBalancer(host=balancer_host, seed=scenario.seed, on_end=on_end,
                                clock=clock)
    fleet = LocalFleet(hosts=hosts, balancer=balancer, agent_mode=scenario.agent_mode,
                       clock=clock)
    clients = ClientProcesses()
    # The timeline is always scraped directly (fast, every half second); the controller reads
    # through the source chosen, a real Prometheus included.
    source = ScrapeLoadSource(targets=fleet.metrics_targets, clock=clock)
    prometheus = None
    if scenario.metrics == "prometheus":
        prometheus = LocalPrometheus(host=scenario.prometheus_host(),
                                     targets=fleet.metrics_targets)
    scraper = ScrapeLoadSource(targets=fleet.metrics_targets, clock=clock)
    ctx = Context(scenario=scenario, fleet=fleet, balancer=balancer, clients=clients,
                  loads=scraper, t0=t0, clock=clock, view=view)
    samples: list[Sample] = []
    sampler: asyncio.Task[None] | None = None
    acting: asyncio.Task[None] | None = None
    await balancer.start()
    try:
        await fleet.start()
        if prometheus is not None:
            await prometheus.start()
            ctx.loads = prometheus.load_source(clock=clock)
        for name in fleet.names:
            await fleet.wait_ready(name)
        sampler = asyncio.create_task(_sample(ctx, source, samples))
        await clients.start(target=balancer.address, scenario=scenario,
                            reconnect_mean=strategy.reconnect_mean(scenario))
        await _wait_connected(ctx, scenario.clients, timeout=30.0 + scenario.clients / 20)
        await asyncio.sleep(scenario.warmup)
        failed_before = clients.counter("calls_failed")
        calls_before = clients.counter("calls_ok") + failed_before
        acting = asyncio.create_task(strategy.run(ctx))
        rollout_started = ctx.now()
        ctx.log("rollout", "", f"rolling restart of {scenario.restarts} pod(s) begins")
        await fleet.rolling_restart(
            fleet.names[: scenario.restarts], pause=scenario.pause,
            on_step=lambda pod, what: ctx.log("restart" if what == "restarting" else "ready",
                                              pod, f"{pod} {what}"))
        rollout_finished = ctx.now()
        ctx.log("rollout", "", "rollout finished")
        await asyncio.sleep(scenario.duration)
        if acting.done() and not acting.cancelled() and acting.exception() is not None:
            # A strategy that crashed must not pass for one that chose to do nothing.
            raise RuntimeError(f"strategy {strategy.name} failed") from acting.exception()
        ended = ctx.now()
        # Three views of the same fact, for the conservation check: streams the clients hold,
        # connections the agents proxy, streams the servers count (the last sample).
        held = {"client_streams": clients.counter("streams"),
                "agent_connections": sum(p.agent.active_count() for p in fleet.pods())}
        failed = clients.counter("calls_failed") - failed_before
        calls = clients.counter("calls_ok") + clients.counter("calls_failed") - calls_before
    finally:
        for task in (acting, sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await clients.stop()
        await fleet.stop()
        await balancer.stop()
        await source.close()
        await scraper.close()
        if prometheus is not None:
            await prometheus.stop()
    return Record(strategy=strategy.name, clients=scenario.clients, samples=tuple(samples),
                  events=tuple(ctx.events), cycled_at=tuple(t for t in cycled_at if t <= ended),
                  rollout_started=rollout_started, rollout_finished=rollout_finished,
                  ended=ended, failed_calls=failed, calls=calls, refused=balancer.stats.refused,
                  extra=held)


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
