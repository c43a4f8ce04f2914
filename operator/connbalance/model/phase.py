"""The phases of one ConnectionBalancer, as shown in its status."""

from enum import StrEnum


class Phase(StrEnum):
    IDLE = "Idle"  # nothing selected yet, or nothing to judge
    SETTLING = "Settling"  # a rollout is under way or pods are not Ready long enough
    REBALANCING = "Rebalancing"  # a step was just issued
    COOLING_DOWN = "CoolingDown"  # waiting for issued drains to finish and be measured
    BALANCED = "Balanced"  # skew within tolerance
    PAUSED = "Paused"  # spec.paused
    DEGRADED = "Degraded"  # no usable metrics, or steps stopped improving skew
