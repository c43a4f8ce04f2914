"""The clients' retry policy, pinned here once: the bench's grpcio clients, the grpc-go fleet
(tests/goclients, which takes it as ``--service-config`` JSON filled from here) and the
end-to-end tests all use this one.

UNAVAILABLE is retried, five attempts in all, with gRPC's randomized exponential backoff: the
n-th retry waits a random time in [0, min(initialBackoff x multiplier^(n-1), maxBackoff)], so
at most 0.1, 0.2, 0.4 and 0.8 s. No ``waitForReady``: a call waiting for a ready channel would
hide the refused connects that the bench is there to count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from connbalance_sim.server import SERVICE

RETRYABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_backoff: float  # seconds
    max_backoff: float  # seconds
    multiplier: float
    retryable: tuple[str, ...]
    wait_for_ready: bool

    def to_service_config(self, *, service: str) -> dict[str, Any]:
        """The gRPC service config that applies this policy to every method of ``service``."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": list(self.retryable),
        }
        return {"methodConfig": [{"name": [{"service": service}],
                                  "waitForReady": self.wait_for_ready,
                                  "retryPolicy": policy}]}

    def budget(self) -> float:
        """The longest a call's retries can wait in all: the sum of the backoff ceilings."""
        total, ceiling = 0.0, self.initial_backoff
        for _ in range(self.max_attempts - 1):
            total += min(ceiling, self.max_backoff)
            ceiling *= self.multiplier
        return total


POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0,
                     retryable=(RETRYABLE,), wait_for_ready=False)


def service_config(*, service: str = SERVICE) -> dict[str, Any]:
    return POLICY.to_service_config(service=service)


def service_config_json(*, service: str = SERVICE) -> str:
    return json.dumps(service_config(service=service), separators=(",", ":"))


def grpcio_retry_options(*, service: str = SERVICE) -> list[tuple[str, int | str]]:
    """The grpcio channel arguments of a client that retries by the policy."""
    return [("grpc.enable_retries", 1),
            ("grpc.service_config", service_config_json(service=service))]


def _duration(seconds: float) -> str:
    """A protobuf Duration as the service config spells it: ``0.1s``, ``1s``."""
    return f"{seconds:g}s"
