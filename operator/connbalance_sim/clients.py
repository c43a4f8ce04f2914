"""The clients: M grpcio channels with one connection each, run as a process of their own.

Each client holds a bidi stream (as a Teleport agent holds its inventory stream), makes a unary
call every ``ping`` seconds, and when the stream breaks opens it again; reconnecting is left to
gRPC's own backoff, set small here. ``use_local_subchannel_pool`` keeps one connection per
channel instead of one shared by all. With ``--random-reconnect MEAN`` each client also drops its
channel after a random time (uniform in 0.5-1.5 x MEAN) and dials again: the client-side strategy.
It starts doing so on SIGUSR1, so the fleet can first settle as it would without it.

The clients come in two groups, spread evenly as the Go fleet spreads them: ``--failfast N`` of
them retry nothing (``grpc.enable_retries`` 0, so not even gRPC's transparent retries: with those
on, grpcio 1.85 streams refused by GOAWAY could hang, see ``connbalance_sim.goaway_retries``); the
rest retry by the pinned policy (``connbalance_sim.retrypolicy``: UNAVAILABLE, 5 attempts, 0.1 s
to 1 s, no wait-for-ready).

Every ``--report`` seconds the process prints one JSON line of counters on stdout (failed calls
also by status code, spelled as grpc-go spells them, and by cause, from the channel's
connectivity state: see ``cause_of``), the totals at the top and each group's under
``groups`` (``retry``, ``failfast``); it runs until SIGTERM, SIGINT or ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc

from connbalance_sim.retrypolicy import grpcio_retry_options
from connbalance_sim.server import HOLD, PING

RETRY, FAILFAST = "retry", "failfast"


@dataclass(slots=True)
class Counters:
    clients: int = 0
    streams: int = 0  # streams established now (the server answered the first message)
    calls_ok: int = 0
    calls_failed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)  # as the Go fleet reports them
    stream_breaks: int = 0
    voluntary: int = 0  # channels dropped on purpose (random-reconnect)
    transient_failures: int = 0  # times a channel entered TRANSIENT_FAILURE (a failed connect)
    failed_by_cause: dict[str, int] = field(default_factory=dict)  # see cause_of


    def add(self, other: Counters) -> None:
        for name, value in asdict(other).items():
            if isinstance(value, dict):
                mine = getattr(self, name)
                for key, count in value.items():
                    mine[key] = mine.get(key, 0) + count
            else:
                setattr(self, name, getattr(self, name) + value)


CLOSE_DURING_CALL = "close_during_call"
REFUSED_CONNECT = "refused_connect"
BACKOFF = "backoff"
DEADLINE = "deadline"
OTHER = "other"
CAUSES = (CLOSE_DURING_CALL, REFUSED_CONNECT, BACKOFF, DEADLINE, OTHER)
_TF = grpc.ChannelConnectivity.TRANSIENT_FAILURE


def cause_of(*, at_start: grpc.ChannelConnectivity, at_end: grpc.ChannelConnectivity,
             failed_connects: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> str:
    """Why a unary call failed, from what its channel did (``failed_connects``: the times the
    channel entered TRANSIENT_FAILURE while the call ran):

    - ``backoff``: made while the channel waited out its reconnect backoff after a failed
      connect; a fail-fast call then fails at once;
    - ``refused_connect``: the connect the call waited for failed (a refused or reset dial);
    - ``deadline``: no answer within the call's deadline, with no failed connect meanwhile: a
      slow server or machine, or a call that waited that long for a connection;
    - ``close_during_call``: made on a ready connection that closed under it;
    - ``other``: anything else.
    """
    if at_start == _TF:
        return BACKOFF
    if failed_connects > 0 or at_end == _TF:
        return REFUSED_CONNECT
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DEADLINE
    if at_start == grpc.ChannelConnectivity.READY:
        return CLOSE_DURING_CALL
    return OTHER


POLL_EVERY = 0.05  # seconds; a failed connect holds TRANSIENT_FAILURE for its backoff (>= 0.1 s)


class StateWatch:
    """Counts a channel's entries into TRANSIENT_FAILURE, by polling its state.

    Polled, not awaited with ``wait_for_state_change``: with grpcio 1.85 a channel waited on
    that way while a GOAWAY-refusing server flips it between READY, IDLE and CONNECTING grew
    its process by about 30 MB a second (four channels grew one to 2.5 GB in 20 s)."""

    def __init__(self, channel: grpc.aio.Channel, counters: Counters) -> None:
        self._channel = channel
        self._counters = counters
        self._last = channel.get_state(try_to_connect=False)
        self.failed_connects = 0

    def poll(self) -> grpc.ChannelConnectivity:
        state = self._channel.get_state(try_to_connect=False)
        if state == _TF and self._last != _TF:
            self.failed_connects += 1
            self._counters.transient_failures += 1
        self._last = state
        return state

    async def run(self, every: float = POLL_EVERY) -> None:
        """Poll one channel until cancelled (a swarm polls all its channels in one task)."""
        while True:
            self.poll()
            await asyncio.sleep(every)


async def poll_all(watches: set[StateWatch], every: float = POLL_EVERY) -> None:
    """One task polls every live channel of a swarm: a task per channel would wake
    ``count / every`` times a second."""
    while True:
        for watch in list(watches):
            watch.poll()
        await asyncio.sleep(every)


def group_of(index: int, *, count: int, failfast: int) -> str:
    """``failfast`` of ``count`` clients, spread evenly (the Go fleet's rule, so they match)."""
    return FAILFAST if (index + 1) * failfast // count > index * failfast // count else RETRY


def channel_options(*, backoff_ms: int, group: str = FAILFAST) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        # Not grpc.min_reconnect_backoff_ms: gRPC also uses it as the connect timeout, and a
        # small one aborts handshakes that are merely slow under load, which then storm.
        ("grpc.max_reconnect_backoff_ms", backoff_ms * 5),
    ]
    if group == RETRY:
        options += grpcio_retry_options()
    else:
        options.append(("grpc.enable_retries", 0))
    return options


def report_line(groups: dict[str, Counters], **extra: object) -> str:
    """The totals at the top, as before groups existed, and each group's under ``groups``."""
    total = Counters()
    for counters in groups.values():
        total.add(counters)
    return json.dumps({"t": time.time(), **asdict(total),
                       "groups": {name: asdict(c) for name, c in groups.items()}, **extra})


class Client:
    def __init__(self, *, target: str, counters: Counters, ping: float, backoff_ms: int,
                 rng: random.Random, reconnect_mean: float | None,
                 reconnecting: asyncio.Event, group: str, watches: set[StateWatch],
                 log_failures: bool = False) -> None:
        self._target = target
        self._watches = watches
        self._counters = counters
        self._ping = ping
        self._options = channel_options(backoff_ms=backoff_ms, group=group)
        self._rng = rng
        self._reconnect_mean = reconnect_mean
        self._reconnecting = reconnecting
        self._log_failures = log_failures

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            channel = grpc.aio.insecure_channel(self._target, options=self._options)
            try:
                await self._use(channel, stop)
            finally:
                await channel.close(grace=None)

    async def _use(self, channel: grpc.aio.Channel, stop: asyncio.Event) -> None:
        """Use one channel until stop, or until its random lifetime ends (then redial)."""
        watch = StateWatch(channel, self._counters)
        self._watches.add(watch)
        tasks = [asyncio.create_task(self._hold(channel, stop)),
                 asyncio.create_task(self._pings(channel, stop, watch))]
        stopping = asyncio.create_task(stop.wait())
        try:
            if self._reconnect_mean is not None:
                enabled = asyncio.create_task(self._reconnecting.wait())
                await asyncio.wait([stopping, enabled], return_when=asyncio.FIRST_COMPLETED)
                enabled.cancel()
                lifetime = self._reconnect_mean * self._rng.uniform(0.5, 1.5)
                await asyncio.wait([stopping], timeout=lifetime)
                if not stop.is_set():
                    self._counters.voluntary += 1
            else:
                await stopping
        finally:
            self._watches.discard(watch)
            for task in [*tasks, stopping]:
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)

    async def _hold(self, channel: grpc.aio.Channel, stop: asyncio.Event) -> None:
        hold = channel.stream_stream(HOLD)
        while not stop.is_set():
            call = hold(wait_for_ready=True)
            established = False
            try:
                await call.write(b"hello")
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        break
                    if not established:
                        established = True
                        self._counters.streams += 1
            except grpc.aio.AioRpcError:
                pass
            finally:
                if established:
                    self._counters.streams -= 1
                    self._counters.stream_breaks += 1
                call.cancel()

    async def _pings(self, channel: grpc.aio.Channel, stop: asyncio.Event,
                     watch: StateWatch) -> None:
        ping = channel.unary_unary(PING)
        await asyncio.sleep(self._rng.uniform(0, self._ping))
        while not stop.is_set():
            at_start, failed_before = watch.poll(), watch.failed_connects
            try:
                await ping(b"ping", timeout=max(2.0, self._ping))
                self._counters.calls_ok += 1
            except grpc.aio.AioRpcError as exc:
                self._counters.calls_failed += 1
                _bump(self._counters.failed_by_code, _code_name(exc.code()))
                at_end = watch.poll()
                cause = cause_of(at_start=at_start, at_end=at_end, code=exc.code(),
                                 failed_connects=watch.failed_connects - failed_before)
                _bump(self._counters.failed_by_cause, cause)
                if self._log_failures:
                    print(json.dumps({"t": time.time(), "cause": cause, "code": exc.code().name,
                                      "details": exc.details(), "at_start": at_start.name,
                                      "at_end": at_end.name}), file=sys.stderr, flush=True)
            await asyncio.sleep(self._ping * self._rng.uniform(0.8, 1.2))


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _code_name(code: grpc.StatusCode) -> str:
    """grpc-go's spelling (Unavailable, DeadlineExceeded), so the two fleets' reports compare."""
    return "".join(part.capitalize() for part in code.name.split("_")).replace(
        "Cancelled", "Canceled")


async def swarm(*, target: str, count: int, ping: float, backoff_ms: int, seed: int,
                reconnect_mean: float | None, report: float, lifetime: float,
                ramp: float, failfast: int = 0, log_failures: bool = False) -> None:
    names = [group_of(i, count=count, failfast=failfast) for i in range(count)]
    groups = {name: Counters(clients=names.count(name)) for name in (RETRY, FAILFAST)
              if name in names}
    stop, reconnecting = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reconnecting.set)
    loop.call_later(lifetime, stop.set)
    rng = random.Random(seed)
    watches: set[StateWatch] = set()
    polling = asyncio.create_task(poll_all(watches))
    tasks = []
    for index in range(count):
        group = names[index]
        client = Client(target=target, counters=groups[group], ping=ping, backoff_ms=backoff_ms,
                        rng=random.Random(rng.random()), reconnect_mean=reconnect_mean,
                        reconnecting=reconnecting, group=group, watches=watches,
                        log_failures=log_failures)
        tasks.append(asyncio.create_task(client.run(stop)))
        if ramp > 0:
            # Dialling all at once would be a thundering herd no real fleet starts with.
            await asyncio.sleep(ramp / count)
    while not stop.is_set():
        print(report_line(groups), flush=True)
        await asyncio.wait([asyncio.create_task(stop.wait())], timeout=report)
    await asyncio.gather(*tasks, return_exceptions=True)
    polling.cancel()
    print(report_line(groups, done=True), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connbalance_sim.clients", description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT of the balancer")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--failfast", type=int, default=0,
                        help="of which this many have no retry policy (default 0: all retry)")
    parser.add_argument("--ping", type=float, default=1.0, help="seconds between unary calls")
    parser.add_argument("--backoff-ms", type=int, default=100, help="gRPC's reconnect backoff")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--random-reconnect", type=float, default=None, metavar="MEAN")
    parser.add_argument("--report", type=float, default=0.5)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to start all clients")
    parser.add_argument("--log-failures", action="store_true",
                        default=bool(os.environ.get("CONNBALANCE_SIM_LOG_FAILURES")),
                        help="one JSON line on stderr per failed call: cause, status, states "
                             "(also with CONNBALANCE_SIM_LOG_FAILURES=1, as under the bench)")
    args = parser.parse_args(argv)
    if args.count < 1 or not 0 <= args.failfast <= args.count:
        parser.error("--count must be at least 1 and --failfast between 0 and --count")
    asyncio.run(swarm(target=args.target, count=args.count, ping=args.ping,
                      backoff_ms=args.backoff_ms, seed=args.seed,
                      reconnect_mean=args.random_reconnect, report=args.report,
                      lifetime=args.lifetime, ramp=args.ramp, failfast=args.failfast,
                      log_failures=args.log_failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
