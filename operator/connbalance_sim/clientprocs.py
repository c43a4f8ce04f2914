"""The bench's client processes (grpcio's ``connbalance_sim.clients`` or the Go fleet), started
with a scenario's share of clients each, and the sum of the counters they report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from connbalance_sim import harm
from connbalance_sim.retrypolicy import service_config_json

if TYPE_CHECKING:
    from connbalance_sim.scenario import Scenario


class ClientProcesses:
    """The client processes, and the sum of the counters they report."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._latest: dict[int, dict[str, Any]] = {}

    async def start(self, *, target: str, scenario: Scenario, reconnect_mean: float | None) -> None:
        share, extra = divmod(scenario.clients, scenario.client_processes)
        failfast_share, failfast_extra = divmod(scenario.failfast, scenario.client_processes)
        for index in range(scenario.client_processes):
            count = share + (1 if index < extra else 0)
            # The two fleets take the same flags and split into the same two groups; the Go one
            # is given the retry policy, which the grpcio one imports.
            failfast = min(count, failfast_share + (1 if index < failfast_extra else 0))
            if scenario.go_clients:
                args = [scenario.go_clients, "--service-config", service_config_json()]
            else:
                args = [sys.executable, "-m", "connbalance_sim.clients"]
            args += ["--failfast", str(failfast), "--target", target, "--count", str(count),
                     "--ping", str(scenario.ping_interval()),
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

    def harm(self) -> harm.Snapshot:
        """Each client group's calls and failures by cause, summed over the processes."""
        return harm.snapshot(self._latest.values())

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
