"""Events on transitions only: the same news is posted once, not at every reconcile.

The controller says what happened each time it looks (Prometheus is down, a step was issued);
this sink posts it as a Kubernetes Event only when it is new: a reason not yet posted for the
same generation and step of the balancer, or (for Normal events, which name their pod) a new
message. What was posted is kept in the balancer's status, so a restarted operator does not
post it again either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["Normal", "Warning"]
Post = Callable[[Kind, str, str], None]  # (type, reason, message)

# How many posted keys status keeps: enough for one step's per-pod events and the warnings
# around them.
_KEPT = 32
_MESSAGE_LIMIT = 1000


@dataclass(slots=True)
class TransitionEvents:
    post: Post
    scope: str  # generation, episode and step: what makes the same reason news again
    posted: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def resuming(cls, post: Post, *, scope: str, posted: Sequence[object]) -> TransitionEvents:
        return cls(post=post, scope=scope, posted=[str(p) for p in posted][-_KEPT:])

    def emit(self, *, kind: Kind, reason: str, message: str) -> None:
        key = f"{reason}@{self.scope}"
        if kind == "Normal":
            key += ":" + hashlib.sha256(message.encode()).hexdigest()[:12]
        self.reasons.append(reason)
        if key in self.posted:
            return
        self.posted = [*self.posted, key][-_KEPT:]
        self.post(kind, reason, message[:_MESSAGE_LIMIT])
