"""What is known about one pod of the pool, and the load measured on it."""

from dataclasses import dataclass

from connbalance.model.drain import DrainRequest
from connbalance.model.ids import PodName


@dataclass(frozen=True, slots=True)
class PodLoad:
    """One measurement: ``load`` connections (or any per-pod figure) at ``timestamp`` (epoch s)."""

    pod: PodName
    load: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class PodState:
    """A pod of the pool as the fleet sees it.

    ``drain`` is the last drain request written to the pod (its annotation): a durable fact that
    survives an operator restart, from which in-flight steps and request ids are derived.
    """

    name: PodName
    ready: bool
    ready_since: float | None = None
    uid: str = ""
    ip: str | None = None
    drain: DrainRequest | None = None
    host_ip: str | None = None  # the node's address: where a node agent answers for the pod
