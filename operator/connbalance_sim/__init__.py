"""The fleet simulator, for ``connbalance demo``, ``connbalance bench`` and the tests.

A distribution of its own (``connbalance-sim``, packaged in ``sim/``), with the ``sim`` extra of
connbalance (grpcio, matplotlib).

Real grpcio servers in their own processes, the agent in proxy mode in front of each, a flow-hash
L4 balancer on loopback, grpcio clients with one connection each, a rolling restart; the same
``controller`` and ``planner`` that ship drive it through the local ``Fleet`` and ``Actuator``
adapters, reading load by a direct scrape (``scrape``) or a real Prometheus (``prom``).

Rule: this package may import any part of ``connbalance``; nothing in ``connbalance`` imports it
(an import-linter contract). ``connbalance`` finds ``demo`` and ``bench`` through the
``connbalance.commands`` entry points that this distribution registers. Traffic stays on
127.0.0.0/8, and every loop it starts ends by itself.
"""
