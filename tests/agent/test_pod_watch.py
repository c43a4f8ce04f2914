"""The annotation intake through a real API server: the agent watches its own pod."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from connbalance.agent.intake import watch_pod_annotation
from connbalance.agent.proxy import ProxyAgent
from connbalance.model import DRAIN_ANNOTATION
from tests.agent.support import HOST, deadline_in, run

pytestmark = pytest.mark.cluster


def test_the_agent_acts_once_on_its_pod_annotation_read_through_the_api(cluster, namespace):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    pod = f"agent-{uuid.uuid4().hex[:6]}"
    # Bound to a node that does not exist: no kubelet runs it, the agent only needs its object.
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "none"}]},
        },
    )

    def annotate(value: dict[str, object] | None, **labels: str) -> None:
        meta: dict[str, object] = {"labels": labels} if labels else {}
        if value is not None:
            meta["annotations"] = {DRAIN_ANNOTATION: json.dumps(value)}
        core.patch_namespaced_pod(pod, namespace, {"metadata": meta})

    async def scenario() -> None:
        held: list[asyncio.StreamWriter] = []
        upstream = await asyncio.start_server(lambda _r, w: held.append(w), HOST, 0)
        agent = ProxyAgent(
            listen=(HOST, 0),
            upstream=(HOST, upstream.sockets[0].getsockname()[1]),
            max_fraction=0.5,
        )
        await agent.start()
        stop = asyncio.Event()
        watch = asyncio.create_task(
            watch_pod_annotation(
                namespace=namespace, name=pod, engine=agent, stop=stop, api_client=api
            )
        )
        conns = [await asyncio.open_connection(HOST, agent.port) for _ in range(4)]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10):
                while agent.active_count() < 4:
                    await asyncio.sleep(0.05)
            request = {
                "id": "api-1",
                "count": 2,
                "windowSeconds": 0,
                "quietMillis": 50,
                "deadline": deadline_in(60),
            }
            await loop.run_in_executor(None, annotate, request)
            async with asyncio.timeout(30):
                while (agent.request_status("api-1") or None) is None:
                    await asyncio.sleep(0.05)
            final = await agent.wait("api-1", timeout=30)
            assert final.cycled == 2
            # Another change to the pod replays the same annotation: nothing more happens.
            await loop.run_in_executor(None, lambda: annotate(None, touched="yes"))
            await asyncio.sleep(2.0)
            assert agent.cycled_total == 2
            assert agent.active_count() == 2
        finally:
            stop.set()
            await watch
            for _reader, writer in conns:
                writer.close()
            await agent.stop()
            for writer in held:
                writer.close()
            upstream.close()
            await upstream.wait_closed()

    run(scenario())
    api.close()
