"""The readiness-gate port: steering by taking a shedding pod out of its Services' endpoints.

With ``steering: readinessGate`` the operator sets a pod condition False for the drain window
(the kubelet then reports the pod not Ready, and the EndpointSlice controller marks it so), and
True again when the window ends. Declarations only, as the rest of ``ports``.
"""

from __future__ import annotations

from typing import Protocol

from connbalance.model import PodState
from connbalance.ports.errors import PortError


class GateMissing(PortError):
    """The pod's spec has no readiness gate for the condition: writing it would change nothing."""

    reason = "ReadinessGateMissing"


class ReadinessGate(Protocol):
    async def close(self, *, pod: PodState) -> None:
        """Take ``pod`` out of its Services' endpoints for the drain window. Raises GateMissing
        (nothing written) or ActuationError (the condition could not be written)."""
        ...

    async def reopen_due(self) -> float | None:
        """Set the condition True on every pod of the pool whose window has ended (one left
        False by an operator that stopped included) or that has the gate but no condition yet.
        Returns the seconds until the next open window ends, None when none is open. Raises
        ActuationError when a condition could not be written."""
        ...
