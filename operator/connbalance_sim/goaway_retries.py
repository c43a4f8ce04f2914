"""``python -m connbalance_sim.goaway_retries``: grpcio clients against a proxy that refuses with
GOAWAY (``refusal="auto"``), with gRPC's retries on or off, as one JSON document.

One server, one steering proxy in front of it, and a clients process (``connbalance_sim.clients``)
through the proxy: the ``retry`` group (retries on, the pinned policy) or the ``failfast`` group
(``grpc.enable_retries`` 0). The proxy cycles a third of the clients with a 5 s steering window,
and the document says what the clients' process weighed and how many of their streams were back,
every two seconds after. It is how the agent's default refusal came to be the reset
(``connbalance.agent.proxy.DEFAULT_REFUSAL``): with retries on, grpcio 1.85 streams refused by
GOAWAY did not come back and the process grew by hundreds of MB a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from connbalance.agent.proxy import ProxyAgent
from connbalance.model import DrainRequest, RequestId
from connbalance_sim.clients import FAILFAST, RETRY

HOST = "127.0.98.1"


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


async def _latest(stdout: asyncio.StreamReader, into: dict[str, Any]) -> None:
    async for line in stdout:
        into.update(json.loads(line))


async def measure(*, group: str, count: int, samples: int) -> dict[str, Any]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connbalance_sim.server", "--listen", f"{HOST}:0", "--metrics",
        f"{HOST}:0", stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    port = int(json.loads(await server.stdout.readline())["grpc"])
    agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, port), max_fraction=1.0,
                       registry=CollectorRegistry(), refusal="auto")
    await agent.start()
    failfast = count if group == FAILFAST else 0
    clients = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connbalance_sim.clients", "--target", f"{HOST}:{agent.port}",
        "--count", str(count), "--failfast", str(failfast), "--ping", "1", "--report", "1",
        "--ramp", "3", "--lifetime", "300", stdout=asyncio.subprocess.PIPE)
    assert clients.stdout is not None
    latest: dict[str, Any] = {}
    reading = asyncio.create_task(_latest(clients.stdout, latest))
    try:
        await asyncio.sleep(8)
        before = {"rss_mb": _rss_mb(clients.pid), "streams": latest.get("streams")}
        now = datetime.now(UTC)
        await agent.submit(DrainRequest(
            id=RequestId(f"goaway-{now.timestamp()}"), count=count // 3, window_seconds=5.0,
            quiet_millis=50, deadline=now + timedelta(seconds=20), steer=True))
        after = []
        for _ in range(samples):
            await asyncio.sleep(2)
            after.append({"rss_mb": _rss_mb(clients.pid), "streams": latest.get("streams"),
                          "refused": agent.refused_total, "cycled": agent.cycled_total})
    finally:
        for process in (clients, server):
            process.terminate()
            await process.wait()
        await reading
        await agent.stop()
    return {"group": group, "clients": count, "before": before, "after": after,
            "load_average": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connbalance_sim.goaway_retries",
                                     description=__doc__)
    parser.add_argument("--group", choices=(RETRY, FAILFAST), default=RETRY)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--samples", type=int, default=10, help="two seconds apart")
    args = parser.parse_args(argv)
    if args.count < 3 or args.samples < 1:
        parser.error("--count must be at least 3 and --samples at least 1")
    print(json.dumps(asyncio.run(measure(group=args.group, count=args.count,
                                         samples=args.samples))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
