"""Value types shared by every layer. Purely data: no I/O, no clock, no imports from the rest."""

from connbalance.model.drain import DRAIN_ANNOTATION, DrainRequest, InvalidDrainRequest
from connbalance.model.ids import PodName, PolicyName, RequestId
from connbalance.model.phase import Phase
from connbalance.model.plan import Drain, Plan
from connbalance.model.pods import PodLoad, PodState
from connbalance.model.policy import (
    ActuationSpec,
    BalanceSpec,
    MetricsSpec,
    Policy,
    PolicyError,
    SecretKeyRef,
    WorkloadRef,
)

__all__ = [
    "DRAIN_ANNOTATION",
    "ActuationSpec",
    "BalanceSpec",
    "Drain",
    "DrainRequest",
    "InvalidDrainRequest",
    "MetricsSpec",
    "Phase",
    "Plan",
    "PodLoad",
    "PodName",
    "PodState",
    "Policy",
    "PolicyError",
    "PolicyName",
    "RequestId",
    "SecretKeyRef",
    "WorkloadRef",
]
