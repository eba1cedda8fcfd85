"""What a client of the health endpoint may hold, and whom to drop when the endpoint is full.

Owns: `HealthLimits` (the caps and timeouts of the health port) and `Connections`, the
registry of its open connections, each `idle` (waiting for a request), `reading` (a request
has begun) or `answering`. Never: reads or writes a socket, or parses HTTP
(`gateway.ops.health` does).

The policy: a new connection that finds a free place is taken at once. One that would have to
take another's place (its address already holds `max_connections_per_source`, or
`max_connections` are open) is served only once its request has arrived: it waits in
`gateway.ops.health_lobby` meanwhile, with no task, and is refused if it stays silent. Then it
takes the place of its own address's idlest connection if its address is at its share, else
the endpoint's: the one idle the longest, else the one reading the longest, else the one
answering the longest. So a client that reconnects as fast as it is dropped costs an accept,
an ioctl and a close per silent attempt, one address cannot hold more than its share, and a
client that holds connections without using them (idle, slowloris, keep-alive spam) loses
them to the next prober. Every hold is also bounded in time (`idle_timeout`,
`header_timeout`, `send_timeout`) and in requests (`max_requests_per_connection`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from enum import IntEnum

import attrs
import trio


@attrs.frozen(kw_only=True)
class HealthLimits:
    """The health port's caps. The defaults suit kubelet probes and Prometheus scrapes: a
    few hundred bytes sent at once, on a new or a reused connection."""

    max_request_bytes: int = 8192  # a request head, exactly (431 beyond)
    max_connections: int = 64  # open at once; the next evicts one (the oldest idle first)
    # Open at once from one address; the next is refused at accept. kubelet opens one per
    # probe, Prometheus one per scrape target: a handful per address.
    max_connections_per_source: int = 16
    # How long a new connection from an address at its share may take to send its request.
    lobby_wait: float = 0.2
    idle_timeout: float = 5.0  # seconds to wait for a request's first byte (keep-alive too)
    header_timeout: float = 2.0  # seconds from a request's first byte to its end
    send_timeout: float = 5.0  # seconds an answer may take to be sent
    max_requests_per_connection: int = 100  # then the connection closes


class Phase(IntEnum):
    """Where a connection is; the lowest is dropped first."""

    IDLE = 0
    READING = 1
    ANSWERING = 2


_ticks = itertools.count()  # orders phase changes that happen at the same clock time


@attrs.define(eq=False)
class Slot:
    """One open connection: its phase, since when, and the scope that ends it."""

    scope: trio.CancelScope
    source: str = "-"
    phase: Phase = Phase.IDLE
    since: float = attrs.field(factory=trio.current_time)
    tick: int = attrs.field(factory=lambda: next(_ticks))
    evicted: bool = False

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.since = trio.current_time()
        self.tick = next(_ticks)


class Connections:
    """The health port's open connections: at most `limit`, and `per_source` from one address."""

    def __init__(self, limit: int, per_source: int | None = None) -> None:
        self.limit = limit
        self.per_source = per_source
        self.slots: set[Slot] = set()
        self.by_source: Counter[str] = Counter()
        self.evicted = 0  # connections dropped to make room, for tests and logs

    def at_share(self, source: str) -> bool:
        """Whether `source` holds all the connections one address may."""
        return self.per_source is not None and self.by_source[source] >= self.per_source

    def must_evict(self, source: str) -> bool:
        """Whether a new connection from `source` can only be taken in another's place."""
        return len(self.slots) >= self.limit or self.at_share(source)

    def open(self, source: str = "-", phase: Phase = Phase.IDLE) -> Slot:
        """A slot for a new connection from `source`. Drops another connection to make room:
        that address's idlest when it is at its share, else the endpoint's idlest when the
        endpoint is full. The caller runs the connection inside `slot.scope` and calls `close`
        at its end."""
        if self.at_share(source):
            self._evict(s for s in self.slots if s.source == source)
        while len(self.slots) >= self.limit:
            self._evict(self.slots)
        slot = Slot(trio.CancelScope(), source, phase)
        self.slots.add(slot)
        self.by_source[source] += 1
        return slot

    def _evict(self, candidates: Iterable[Slot]) -> None:
        victim = min(candidates, key=lambda slot: (slot.phase, slot.since, slot.tick))
        self._forget(victim)
        victim.evicted = True
        victim.scope.cancel()
        self.evicted += 1

    def close(self, slot: Slot) -> None:
        if slot in self.slots:
            self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        self.slots.discard(slot)
        left = self.by_source[slot.source] - 1
        if left:
            self.by_source[slot.source] = left
        else:
            del self.by_source[slot.source]
