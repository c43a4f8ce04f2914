"""Kubernetes adapters, thin: the CRD, the ``Fleet`` and ``Actuator`` over the API server, status
and Events, and the kopf handlers of ``connbalance run``. Decisions live in the controller; this
package only reads and writes cluster objects."""
