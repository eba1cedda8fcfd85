"""Admission: which sources may connect, and whether one more call may start now.

Owns: the allowed source networks, the places held by admitted calls (in all, and by source
address), the connections still in the upgrade (pending handshakes, in all and by source), and
the refusal each limit earns (the reason token counted in `ServerStats.refused_by`
and the HTTP status sent). Never awaits: a check and the reservation that follows it happen with
no await between them, so the limits hold however many handshakes race.

Draining refuses no connection already accepted: accept() took it out of the kernel's queue,
where the next process (socket activation) or another worker would have served it, and a
refusal now would drop it. The drain stops accept() instead (`gateway.server.serve`).

Pending handshakes are bounded before a connection costs anything: the accept loop asks
`pending_refusal` right after accept() and closes a connection beyond the bounds at once,
unread (counted in `ServerStats.connections_refused`). With workers, `max_calls` is shared
through `gateway.server.shared_calls` (the whole gateway); the pending bound is divided among
the workers (a handshake is short, and the kernel spreads connections evenly); the per-source
bounds hold per worker.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from typing import Final

import attrs

from ..wire.websocket import Reject
from .shared_calls import SharedCalls

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The HTTP status each refusal earns, by the reason counted in `ServerStats.refused_by`.
REFUSAL_STATUS: Final = {"network": 403, "max_calls_per_source": 429, "max_calls": 503}


@attrs.frozen
class Refusal:
    """Why a handshake may not become a call: `reason` for the counts, `reject` for the peer."""

    reason: str
    reject: Reject

    @classmethod
    def of(cls, reason: str, body: str) -> Refusal:
        return cls(reason, Reject(REFUSAL_STATUS[reason], body))


class Admission:
    """The allowed networks (fixed for the server's life) and the places held by live calls.
    The call limits are read from the running configuration at each check (they reload)."""

    def __init__(
        self, allowed_networks: Iterable[str] = (), shared: SharedCalls | None = None
    ) -> None:
        self.allowed_networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )
        self.shared = shared  # the workers' gateway-wide count of live calls (None: alone)
        self.reserved = 0  # calls admitted (from the accepted upgrade to the end of the call)
        self.reserved_by_source: Counter[str] = Counter()  # the same, by source address
        self.pending = 0  # connections accepted and not yet admitted or refused
        self.pending_by_source: Counter[str] = Counter()

    @property
    def gateway_calls(self) -> int:
        """Live calls in the whole gateway (every worker's)."""
        return self.reserved if self.shared is None else self.shared.total()

    def would_admit(self, max_calls: int) -> bool:
        """Whether a call (from a source under its own limit) would be admitted now."""
        return self.gateway_calls < max_calls

    def pending_refusal(self, source: str, max_pending: int, per_source: int | None) -> str | None:
        """Why a just-accepted connection must be closed unread (the reason counted), or None:
        it is counted as pending (`handshake_done` ends that)."""
        share = 1 if self.shared is None else self.shared.workers
        if self.pending >= -(-max_pending // share):  # this worker's share, rounded up
            return "max_pending_handshakes"
        if per_source is not None and self.pending_by_source[source] >= per_source:
            return "max_pending_handshakes_per_source"
        self.pending += 1
        self.pending_by_source[source] += 1
        return None

    def handshake_done(self, source: str) -> None:
        self.pending -= 1
        self.pending_by_source[source] -= 1
        if not self.pending_by_source[source]:
            del self.pending_by_source[source]

    def screen(self, source: str) -> Refusal | None:
        """Refuse sources outside the allowed networks (before a token check costs anything)."""
        if self.allowed_networks and not in_networks(source, self.allowed_networks):
            return Refusal.of("network", "the source address is not allowed")
        return None

    def refusal(self, source: str, max_calls: int, per_source: int | None) -> Refusal | None:
        """Why a call from `source` may not start now; None: it may."""
        if self.gateway_calls >= max_calls:
            return Refusal.of("max_calls", f"at the limit of {max_calls} calls")
        if per_source is not None and self.reserved_by_source[source] >= per_source:
            return Refusal.of("max_calls_per_source", f"{per_source} calls from this address")
        return None

    def admit(self, source: str, max_calls: int, per_source: int | None) -> Refusal | None:
        """Check and take the call's place at once (for workers, under the shared lock)."""
        refusal = self.refusal(source, max_calls, per_source)
        if refusal is None and self.shared is not None and not self.shared.try_reserve(max_calls):
            refusal = Refusal.of("max_calls", f"at the limit of {max_calls} calls")
        if refusal is None:
            self.reserved += 1
            self.reserved_by_source[source] += 1
        return refusal

    def reserve(self, source: str) -> None:
        self.reserved += 1
        self.reserved_by_source[source] += 1
        if self.shared is not None:
            self.shared.try_reserve(1 << 62)

    def release(self, source: str) -> None:
        if self.shared is not None:
            self.shared.release()
        self.reserved -= 1
        self.reserved_by_source[source] -= 1
        if not self.reserved_by_source[source]:
            del self.reserved_by_source[source]  # no entry left behind per address


def in_networks(source: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:  # no address (not a socket): nothing to match
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)
