"""The per-policy control loop: a level-triggered state machine over four ports (``LoadSource``,
``Fleet``, ``Actuator``, ``EventSink``), and the one issuer every drain request goes through.

Rule: the world comes in only through the ports and the injected clock; nothing here does I/O or
reads the time itself. Nothing a decision to act depends on is kept in memory between ticks: it
comes back in the ``ControllerState`` the caller persisted (the ConnectionBalancer's status) and
from the durable facts on the pods (their last drain request), so a tick can be killed at any
line and restarted without cycling a connection twice. The one memory, ``LastReadings`` (when
each pod was last read), can only make a tick wait, and its loss only makes it wait less. Only
``DrainIssuer`` makes requests: it owns their ids, the caps, the cooldown and the Events that
announce them.
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
from connbalance.controller.scrapelag import LastReadings
from connbalance.controller.state import Condition, ControllerState, request_id

__all__ = [
    "CapExceeded",
    "Condition",
    "Controller",
    "ControllerState",
    "CooldownActive",
    "DrainIssuer",
    "IssueRefused",
    "LastReadings",
    "RecordingActuator",
    "Seen",
    "TickResult",
    "request_id",
]
