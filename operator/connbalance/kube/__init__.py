"""Kubernetes adapters, thin: what the operator reads from and writes to the API server, and
the kopf entry point that runs it.

- The controller's ports over the cluster: ``fleet`` (the pods and their workload's rollout),
  ``actuator`` (the pod annotation, and with method http a POST to the agent's port, over
  HTTPS as ``agenttls`` says with agentScheme https), ``gates`` (the pod condition
  ``connbalance.io/accepting``, for steering readinessGate), Events (``handlers``).
- What a ConnectionBalancer refers to and becomes: ``secrets`` (read by name), ``status``
  (written from a tick's result), ``crd`` (the schema, generated from the policy's settings).
- Running it: ``handlers`` (kopf), ``loops`` (one loop per balancer), ``leader`` (the Lease),
  ``metrics`` (the operator's own), ``main`` (``connbalance run``); ``readiness`` reads a pool
  once for ``connbalance plan``.

Rule: no balancing decisions here. Whether and how much to cycle is the controller's; this
package turns API objects into the model's values, and the controller's results into API writes.
Besides the API server, its own I/O is the POST to an agent (method http), the operator's
metrics and liveness endpoints, and a CA bundle written to a private directory for the
Prometheus client; Prometheus itself is read through ``connbalance.prometheus``.
"""
