"""A leader-election candidate in a process of its own, so a test can SIGKILL a leader.

``python -m tests.kube.lease_candidate KUBECONFIG NAMESPACE LEASE IDENTITY`` prints ``leading``
when it starts leading and ``standby`` once its first attempt found another holder.
"""

from __future__ import annotations

import asyncio
import sys

from kubernetes import client, config

from connbalance.kube.leader import LeaseElector, Timing

TIMING = Timing(lease_duration=4, renew_deadline=3, retry_period=1)


async def campaign(kubeconfig: str, namespace: str, lease: str, identity: str) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)
    elector = LeaseElector(
        coordination=client.CoordinationV1Api(api),
        namespace=namespace,
        name=lease,
        identity=identity,
        timing=TIMING,
        on_started=lambda: print("leading", flush=True),
        on_stopped=lambda: print("stopped", flush=True),
    )
    task = asyncio.create_task(elector.run())
    await elector.settled.wait()
    if not elector.leading.is_set():
        print("standby", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(campaign(*sys.argv[1:5]))
