"""The per-policy control loop: a level-triggered state machine over the three ports.

Each ``tick`` re-reads the pool and its load, decides with the planner and hands drain requests to
one issuer. It keeps nothing in memory between ticks: what it needs comes back in the
``ControllerState`` the caller persisted (the ConnectionBalancer's status) and from the durable
facts on the pods (their last drain request), so it can be killed at any line and restarted
without cycling a connection twice.
"""

from connbalance.controller.issuer import (
    CapExceeded,
    CooldownActive,
    DrainIssuer,
    IssueRefused,
    RecordingActuator,
)
from connbalance.controller.machine import Controller
from connbalance.controller.results import Seen, TickResult
from connbalance.controller.state import Condition, ControllerState, request_id

__all__ = [
    "CapExceeded",
    "Condition",
    "Controller",
    "ControllerState",
    "CooldownActive",
    "DrainIssuer",
    "IssueRefused",
    "RecordingActuator",
    "Seen",
    "TickResult",
    "request_id",
]
