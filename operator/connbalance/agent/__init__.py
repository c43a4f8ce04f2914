"""The agent: a sidecar in the server pod that cycles a bounded share of client connections.

Rule: imports ``connbalance.model`` and ``connbalance.ports`` only, and reads the time only
through an injected ``connbalance.ports.clock.Clock`` (monotonic seconds, UTC wall time, sleep):
no ``time.monotonic``, ``time.time``, ``datetime.now`` or timed ``asyncio.sleep`` here, so every
schedule can be driven by a fake clock in tests (timeouts on I/O, and the pace at which the
intakes poll, stay on the event loop's time). Both modes share one engine (``engine.py``):
deduplicated intake (an id is acted on at most once, even across restarts, via the state file),
the ``max_fraction`` ceiling, closes spread over the window with jitter, the most freshly quiet
connections first, graceful (quiet) closes and forced ones at the deadline, counted apart. The
node agent (``node.py``, ``connbalance node-agent``) runs one reset-mode agent per pod of its
node, each in that pod's network namespace (``podns.py`` finds it, ``netns.py`` enters it).

In-process API (stable; the fleet simulator uses it)::

    from connbalance.agent import ProxyAgent, AgentServer, agent_routes
    from connbalance.model import DrainRequest
    from connbalance.ports.clock import SYSTEM_CLOCK

    agent = ProxyAgent(listen=("127.0.6.1", 0), upstream=("127.0.6.1", 7000), max_fraction=1.0,
                       state_file=None, rng=None, registry=None,
                       clock=SYSTEM_CLOCK)   # all keyword-only; clock: a ports.clock.Clock
    await agent.start()              # inside a running event loop
    agent.port                       # the bound proxy port
    agent.connections()              # list[ConnectionInfo]: id, peer, opened_at, last_activity,
                                     #   idle_seconds, bytes_in, bytes_out, queued,
                                     #   client_spoke_last (times are agent.clock.monotonic()
                                     #   seconds)
    agent.active_count()             # int
    agent.connection_ids()           # frozenset[str]: what a request arriving now may cycle
    status = await agent.submit(req) # RequestStatus(id, count, cycled, forced, state, reason,
                                     #   duplicate); returns at once, cycling runs in a task;
                                     #   state is RequestState.RUNNING, or REJECTED (count over
                                     #   the ceiling, deadline passed); a repeated id returns
                                     #   the known status with duplicate=True and does nothing
    await agent.wait(req.id, timeout=None)   # final RequestStatus (state DONE)
    await agent.close(["c1", "c7"], graceful=True, quiet_millis=200, deadline_seconds=30.0)
                                     # -> list[CloseOutcome | None] (GRACEFUL, FORCED, or None
                                     #   when that id is not open); counted in the metrics
    agent.refuse_new(seconds)        # steering: reset new client connections for a while
    agent.status()                   # AgentStatus(mode, active, cycled_total, requests,
                                     #   degraded); .to_wire() is the /status JSON
    agent.cannot_cycle(reason)       # from now on reject every request saying why (degraded)
    agent.metrics.registry           # its own prometheus_client.CollectorRegistry
    await agent.stop()

    server = AgentServer(agent, host="127.0.6.1", port=0, token="secret")
    await server.start(); server.port   # /healthz, /status, /metrics, POST /v1/drain
    await server.stop()
    routes = agent_routes(agent, token="secret")   # list[Route], for an HttpServer of your own

``ResetAgent(port=3025, address="10.0.3.7", max_fraction=0.25, ...)`` (in
``connbalance.agent.reset``) offers the same engine API for reset mode; its ``start()`` raises
``ResetUnavailable`` when SOCK_DESTROY cannot be used, or with ``stay_up_if_unable=True`` (the
sidecar's command line) leaves the agent up but degraded, rejecting every request. With ``address``
it sees only connections to that address and steers with a self-expiring nftables element
(``connbalance.agent.steering``) instead of a refusing listener. Connection ids: ``c<N>`` in proxy
mode, the kernel's socket cookie (hex) in reset mode, where ``opened_at`` is when the agent first
saw the socket (listed by ``connections()``); reset mode ranks ties by the socket's inode, which
the kernel numbers as it makes sockets, and ranks its scan's columns without a row or a
``ConnectionInfo`` each (``diagscan.Scan``, ``reset.first_to_close``), so a scan of 100,000
sockets stays cheap.

A connection is quiet, and may be closed gracefully, when neither direction carried data for
``quietMillis``, no buffer holds any, and the server had the last word (silence after a client's
request is a server still answering it). Otherwise it is closed at the deadline, counted forced.
HTTP answers on POST /v1/drain: 202 accepted, 200 duplicate id, 422 rejected (nothing closed),
400 malformed (``{"error", "field"}``), 401 missing or wrong token, 413 a body over 64 KiB. The
server is ``httpserve.HttpServer``: h11 and asyncio's streams, not aiohttp, whose server alone
cost an agent about 12 MiB of resident memory. The command line is
``connbalance agent`` (``connbalance.agent.main:run``).
"""

from connbalance.agent.engine import (
    AgentStatus,
    CloseOutcome,
    DrainEngine,
    RequestState,
    RequestStatus,
)
from connbalance.agent.http import AgentServer, agent_routes
from connbalance.agent.proxy import ProxyAgent
from connbalance.agent.selection import ConnectionInfo

__all__ = [
    "AgentServer",
    "AgentStatus",
    "CloseOutcome",
    "ConnectionInfo",
    "DrainEngine",
    "ProxyAgent",
    "RequestState",
    "RequestStatus",
    "agent_routes",
]
