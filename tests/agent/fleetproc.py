"""Run a fleet of gRPC clients in a process of their own, as real clients would be.

``python -m tests.agent.fleetproc TARGET COUNT UNARY_INTERVAL`` prints ``ready`` once every client
holds its stream, then waits for a line on stdin and prints one JSON line with the totals.
Keeping the clients out of the agent's process keeps their timing honest: a client whose calls
queue behind the agent's event loop would look slower than any real one.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.agent.grpcfleet import start_clients, stop_clients


async def main(target: str, count: int, unary_interval: float) -> None:
    clients = await start_clients(target, count, unary_interval=unary_interval)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
        print(
            json.dumps(
                {
                    "streams_opened": sum(c.streams_opened for c in clients),
                    "reconnects": sum(c.reconnects for c in clients),
                    "waiting": sum(1 for c in clients if c.streams_opened == 0),
                    "unary_ok": sum(c.unary_ok for c in clients),
                    "unary_failed": [f for c in clients for f in c.unary_failed],
                }
            ),
            flush=True,
        )
    await stop_clients(clients)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
