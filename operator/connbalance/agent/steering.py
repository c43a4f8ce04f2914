"""Reset-mode steering in the kernel: refuse new connections to the pod's address and port.

Reset mode is out of the data path, so it steers with nftables. Every agent in a network
namespace shares one table, ``inet connbalance``: two sets of (address . port) elements with
timeouts, and an input chain whose rules answer a SYN to an element with a TCP reset. A SYN only:
established connections are untouched, and no conntrack is needed.

Each agent only ever writes the element for its own address and port, so agents whose pods share
a namespace (the test cluster, ``hostNetwork`` pods) never undo each other's refusals. The element
carries its own timeout: the kernel drops it when the window ends, so an agent killed mid-window
never leaves its pod refusing clients. At start-up an agent removes its own leftover element, and
on a clean stop the one it set. Given a ``NetworkNamespace``, it runs ``nft`` in that one (the
node agent's way into a pod), else in its own.

Each change is one ``nft -f -`` transaction, applied whole or not at all; the table, sets and
rules are declared idempotently, so agents may start in any order and at the same time.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import shutil
import subprocess
from collections.abc import Sequence

from connbalance.agent.netns import NamespaceUnavailable, NetworkNamespace
from connbalance.ports.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

TABLE = "inet connbalance"
_NFT_TIMEOUT_SECONDS = 10.0
_RULESET = f"""add table {TABLE}
add set {TABLE} refuse4 {{ type ipv4_addr . inet_service; flags timeout; }}
add set {TABLE} refuse6 {{ type ipv6_addr . inet_service; flags timeout; }}
add chain {TABLE} input {{ type filter hook input priority filter - 10; policy accept; }}
flush chain {TABLE} input
add rule {TABLE} input tcp flags & (syn | ack) == syn ip daddr . tcp dport @refuse4 \
reject with tcp reset
add rule {TABLE} input tcp flags & (syn | ack) == syn ip6 daddr . tcp dport @refuse6 \
reject with tcp reset
"""


class SteeringUnavailable(RuntimeError):
    """nftables cannot be used here; the message says why and what to change."""


class KernelSteering:
    """Refuses new connections to ``address``:``port`` through a self-expiring nftables element."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        nft: Sequence[str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        namespace: NetworkNamespace | None = None,
    ) -> None:
        parsed = ipaddress.ip_address(address)
        self.address = str(parsed)
        self.port = port
        self._set = "refuse4" if parsed.version == 4 else "refuse6"
        self._nft = list(nft) if nft is not None else [shutil.which("nft") or "nft"]
        self._clock = clock
        # The node agent's: nft runs from the thread that entered the pod's namespace.
        self._namespace = namespace
        self._until = -math.inf

    @property
    def element(self) -> str:
        return f"{self.address} . {self.port}"

    def prepare(self) -> None:
        """Declare the table, sets and rules, and remove this agent's leftover element if any.

        Adding then deleting the element in one transaction removes it whether or not it was
        there, and never touches another address's element."""
        self._apply(_RULESET + self._removal(), doing="set up")
        self._until = -math.inf

    def refuse(self, seconds: float) -> None:
        """Refuse new connections for ``seconds`` from now, or longer if already refusing longer."""
        until = self._clock.monotonic() + seconds
        if until <= self._until:
            return
        millis = max(1, math.ceil(seconds * 1000.0))
        timed = f"{{ {self.element} timeout {millis}ms }}"
        # An element's timeout cannot be changed in place: add it (a no-op when it is there),
        # delete it, and add it again with the new timeout, in one transaction: no gap.
        self._apply(
            f"add element {TABLE} {self._set} {timed}\n"
            f"delete element {TABLE} {self._set} {{ {self.element} }}\n"
            f"add element {TABLE} {self._set} {timed}\n",
            doing="refuse new connections",
        )
        self._until = until

    def clear(self) -> None:
        """Accept new connections again now."""
        self._apply(self._removal(), doing="stop refusing")
        self._until = -math.inf

    def _removal(self) -> str:
        element = f"{{ {self.element} }}"
        return (
            f"add element {TABLE} {self._set} {element}\n"
            f"delete element {TABLE} {self._set} {element}\n"
        )

    def _apply(self, script: str, *, doing: str) -> None:
        run = functools.partial(
            subprocess.run,
            [*self._nft, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=_NFT_TIMEOUT_SECONDS,
            check=False,
        )
        try:
            done = run() if self._namespace is None else self._namespace.call(run)
        except FileNotFoundError:
            raise SteeringUnavailable(
                f"reset-mode steering needs the nft command ({self._nft[0]} is missing): "
                "install nftables in the image"
            ) from None
        except (OSError, subprocess.TimeoutExpired, NamespaceUnavailable) as exc:
            raise SteeringUnavailable(f"nft could not {doing} for {self.element}: {exc}") from None
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[0] if done.stderr.strip() else "no message"
            hint = (
                " (needs CAP_NET_ADMIN in the pod's network namespace)"
                if "Operation not permitted" in done.stderr
                else ""
            )
            raise SteeringUnavailable(f"nft could not {doing} for {self.element}: {reason}{hint}")


__all__ = ["TABLE", "KernelSteering", "SteeringUnavailable"]
