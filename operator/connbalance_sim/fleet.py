"""The local fleet: pods made of a server process and its agent.

In ``proxy`` mode the agent is an L4 proxy in front of the server and the balancer sends it the
traffic; in ``reset`` mode (CAP_NET_ADMIN and SOCK_DESTROY) it stays out of the data path and
destroys chosen server-side sockets, and the balancer talks to the server directly. Each pod has
a loopback address of its own and its reset agent is given it, as ``POD_IP`` gives it in a pod:
the agent cycles only that server's connections and steers with a self-expiring nftables element
on that address and port (``nft`` and CAP_NET_ADMIN; without ``nft`` it cycles unsteered).
The balancer's health check then goes to the metrics port, as a readiness probe goes to
Teleport's diag port: a check on the served port would be refused while the pod steers, and the
pod would leave the pool as if unready.

``LocalFleet`` is the ``Fleet`` port for the simulator and ``LocalActuator`` its ``Actuator``:
the last drain request delivered to a pod is kept on that pod object (the analogue of the
``connbalance.io/drain`` annotation), so a replaced pod starts without one, as a new pod does.
A restart deletes the pod (it leaves the balancer first, as it leaves the endpoints), stops the
server with a short grace, and starts a new pod with a new uid under the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from connbalance.agent.engine import RequestState
from connbalance.agent.proxy import DEFAULT_REFUSAL, REFUSALS, ProxyAgent, Refusal
from connbalance.agent.reset import ResetAgent, ResetUnavailable, check_sock_destroy
from connbalance.model import DrainRequest, PodName, PodState
from connbalance.ports import ActuationError, FleetView
from connbalance_sim.balancer import FlowHashBalancer

START_TIMEOUT = 20.0  # seconds, unless the fleet is given its own (Scenario.start_timeout)
AGENT_MODES = ("proxy", "reset", "auto")


def agent_mode(requested: str) -> str:
    """``auto`` is reset where SOCK_DESTROY works (CAP_NET_ADMIN), proxy elsewhere."""
    if requested != "auto":
        return requested
    try:
        check_sock_destroy()
    except ResetUnavailable:
        return "proxy"
    return "reset"


@dataclass(slots=True, eq=False)
class Pod:
    """One pod object: a server process and its agent. A restart makes a new one."""

    name: PodName
    uid: str
    host: str
    process: asyncio.subprocess.Process
    grpc_port: int
    metrics_port: int
    agent: ProxyAgent | ResetAgent
    started_at: float
    drain: DrainRequest | None = None
    deleting: bool = False

    @property
    def metrics_address(self) -> str:
        return f"{self.host}:{self.metrics_port}"


class LocalFleet:
    def __init__(self, *, hosts: Sequence[str], balancer: FlowHashBalancer, prefix: str = "sim",
                 grace: float = 0.5, agent_mode: str = "proxy",
                 clock: Callable[[], float] = time.time, refusal: Refusal = DEFAULT_REFUSAL,
                 h2_drain: bool = False, start_timeout: float = START_TIMEOUT) -> None:
        if agent_mode not in ("proxy", "reset"):
            raise ValueError(f"agent mode must be proxy or reset, not {agent_mode!r}")
        if refusal not in REFUSALS:
            raise ValueError(f"refusal must be one of {', '.join(REFUSALS)}, not {refusal!r}")
        self._agent_mode = agent_mode
        self._refusal = refusal
        self._h2_drain = h2_drain
        self._names = [PodName(f"{prefix}-{i}") for i in range(len(hosts))]
        self._hosts = dict(zip(self._names, hosts, strict=True))
        self._balancer = balancer
        self._grace = grace
        self._start_timeout = start_timeout
        self._clock = clock
        self._pods: dict[PodName, Pod] = {}
        self._uids = itertools.count(1)
        self._rolling = False
        self._listeners: list[Callable[[], None]] = []
        balancer.watch_health(self._changed)

    @property
    def names(self) -> list[PodName]:
        return list(self._names)

    @property
    def rolling(self) -> bool:
        return self._rolling

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change a watch on the pods and their Deployment would
        deliver: a pod created, deleting, gone or flipping Ready, a rollout starting or ending.
        Returns the call that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def pod(self, name: PodName) -> Pod | None:
        return self._pods.get(name)

    def pods(self) -> list[Pod]:
        return [self._pods[n] for n in self._names if n in self._pods]

    def is_ready(self, name: PodName) -> bool:
        """Whether the balancer serves the pod: its Ready condition."""
        return self._balancer.is_ready(name)

    def metrics_targets(self) -> dict[PodName, str]:
        return {pod.name: pod.metrics_address for pod in self._pods.values() if not pod.deleting}

    async def start(self) -> None:
        await asyncio.gather(*(self._create(name) for name in self._names))

    async def stop(self) -> None:
        await asyncio.gather(*(self._delete(name) for name in list(self._pods)))

    async def restart(self, name: PodName) -> None:
        await self._delete(name)
        await self._create(name)

    async def rolling_restart(self, names: Sequence[PodName], *, pause: float,
                              on_step: Callable[[PodName, str], None] | None = None) -> None:
        """One pod at a time: delete, start anew, wait until the balancer serves it, pause."""
        self._rolling = True
        self._changed()
        try:
            for index, name in enumerate(names):
                if on_step is not None:
                    on_step(name, "restarting")
                await self.restart(name)
                await self.wait_ready(name)
                if on_step is not None:
                    on_step(name, "ready")
                if index < len(names) - 1:
                    await asyncio.sleep(pause)
        finally:
            self._rolling = False
            self._changed()

    async def wait_ready(self, name: PodName, *, timeout: float | None = None) -> None:
        timeout = self._start_timeout if timeout is None else timeout
        deadline = self._clock() + timeout
        while not self._balancer.is_ready(name):
            if self._clock() > deadline:
                raise TimeoutError(f"{name} did not become ready in {timeout:g}s")
            await asyncio.sleep(0.05)

    async def observe(self) -> FleetView:
        pods = []
        for name in self._names:
            pod = self._pods.get(name)
            if pod is None or pod.deleting:
                pods.append(PodState(name=name, ready=False))
                continue
            ready = self._balancer.is_ready(name)
            pods.append(PodState(name=name, ready=ready,
                                 ready_since=pod.started_at if ready else None,
                                 uid=pod.uid, ip=pod.host, drain=pod.drain))
        uids = ",".join(p.uid for p in pods)
        revision = hashlib.sha256(uids.encode()).hexdigest()[:12]
        return FleetView(pods=tuple(pods), rollout_complete=not self._rolling, revision=revision)

    async def _create(self, name: PodName) -> None:
        host = self._hosts[name]
        uid = f"{name}-{next(self._uids)}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connbalance_sim.server", "--listen", f"{host}:0",
            "--metrics", f"{host}:0", "--grace", str(self._grace), "--name", uid,
            # grpcio prints a traceback for every stream cancelled at shutdown: noise, not news.
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=self._start_timeout)
            ports = json.loads(line)
        except (TimeoutError, ValueError):
            process.kill()
            await process.wait()
            raise RuntimeError(f"server for {name} did not start") from None
        grpc_port = int(ports["grpc"])
        agent: ProxyAgent | ResetAgent
        if self._agent_mode == "reset":
            agent = ResetAgent(port=grpc_port, address=host, max_fraction=1.0,
                               registry=CollectorRegistry())
        else:
            agent = ProxyAgent(listen=(host, 0), upstream=(host, grpc_port), max_fraction=1.0,
                               registry=CollectorRegistry(), refusal=self._refusal,
                               h2_drain=self._h2_drain)
        await agent.start()
        pod = Pod(name=name, uid=uid, host=host, process=process, grpc_port=grpc_port,
                  metrics_port=int(ports["metrics"]), agent=agent, started_at=self._clock())
        self._pods[name] = pod
        if isinstance(agent, ProxyAgent):
            data_port, health_port = agent.port, grpc_port
        else:
            data_port, health_port = grpc_port, pod.metrics_port
        self._balancer.register(name=name, host=host, port=data_port, health_port=health_port)
        self._changed()

    async def _delete(self, name: PodName) -> None:
        pod = self._pods.get(name)
        if pod is None:
            return
        pod.deleting = True
        self._balancer.deregister(name)
        self._changed()
        with contextlib.suppress(ProcessLookupError):
            pod.process.terminate()
        try:
            await asyncio.wait_for(pod.process.wait(), timeout=self._grace + 5.0)
        except TimeoutError:
            pod.process.kill()
            await pod.process.wait()
        await pod.agent.stop()
        if self._pods.get(name) is pod:
            del self._pods[name]
        self._changed()


class LocalActuator:
    """Delivers a drain request to the pod's agent and records it on the pod (its annotation).

    With ``steer`` the balancer also keeps new connections off the pod for the drain window, so
    the connections it sheds land on the others.
    """

    def __init__(self, *, fleet: LocalFleet, balancer: FlowHashBalancer, steer: bool,
                 clock: Callable[[], float] = time.time,
                 on_deliver: Callable[[PodName, DrainRequest], None] | None = None) -> None:
        self._fleet = fleet
        self._balancer = balancer
        self._steer = steer
        self._clock = clock
        self._on_deliver = on_deliver

    async def deliver(self, *, pod: PodState, request: DrainRequest) -> None:
        current = self._fleet.pod(pod.name)
        if current is None or current.deleting or (pod.uid and current.uid != pod.uid):
            raise ActuationError(f"pod {pod.name} (uid {pod.uid}) is gone")
        current.drain = request
        if self._steer:
            # A little past the window, so the last closes of the window also land elsewhere.
            self._balancer.steer_off(pod.name, until=self._clock() + request.window_seconds + 1.0)
        status = await current.agent.submit(request)
        if status.state is RequestState.REJECTED:
            raise ActuationError(f"pod {pod.name} refused {request.id}: {status.reason}")
        if self._on_deliver is not None:
            self._on_deliver(pod.name, request)
