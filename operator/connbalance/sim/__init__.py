"""A fleet simulator built from real parts, for ``connbalance demo``, ``bench`` and the tests.

Real grpcio servers in their own processes, the agent in proxy mode in front of each, a flow-hash
L4 balancer on loopback, grpcio clients with one connection each, a rolling restart; the same
``controller`` and ``planner`` drive it through the local ``Fleet`` and ``Actuator`` adapters.

Rule: this package may import every layer below it; nothing below imports it. Traffic stays on
127.0.0.0/8, and every loop it starts ends by itself.
"""
