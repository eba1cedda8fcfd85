"""What a client of the health endpoint may hold, and whom to drop when the endpoint is full.

Owns: `HealthLimits` (the caps and timeouts of the health port) and `Connections`, the
registry of its open connections, each `idle` (waiting for a request), `reading` (a request
has begun) or `answering`. Never: reads or writes a socket, or parses HTTP
(`gateway.ops.health` does).

The policy: a new connection is always taken. When `max_connections` are open, one is dropped
to make room: the one idle the longest, else the one reading the longest, else the one
answering the longest. A client that holds connections without using them (idle, slowloris,
keep-alive spam) so loses them to the next prober, whose request is read as soon as it is
accepted; every hold is also bounded in time (`idle_timeout`, `header_timeout`,
`send_timeout`) and in requests (`max_requests_per_connection`).
"""

from __future__ import annotations

import itertools
from enum import IntEnum

import attrs
import trio


@attrs.frozen(kw_only=True)
class HealthLimits:
    """The health port's caps. The defaults suit kubelet probes and Prometheus scrapes: a
    few hundred bytes sent at once, on a new or a reused connection."""

    max_request_bytes: int = 8192  # a request head, exactly (431 beyond)
    max_connections: int = 64  # open at once; the next evicts one (the oldest idle first)
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
    phase: Phase = Phase.IDLE
    since: float = attrs.field(factory=trio.current_time)
    tick: int = attrs.field(factory=lambda: next(_ticks))
    evicted: bool = False

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.since = trio.current_time()
        self.tick = next(_ticks)


class Connections:
    """The health port's open connections, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.slots: set[Slot] = set()
        self.evicted = 0  # connections dropped to make room, for tests and logs

    def open(self) -> Slot:
        """A slot for a new connection; drops another to make room if the endpoint is full.
        The caller runs the connection inside `slot.scope` and calls `close` at its end."""
        while len(self.slots) >= self.limit:
            victim = min(self.slots, key=lambda slot: (slot.phase, slot.since, slot.tick))
            self.slots.discard(victim)
            victim.evicted = True
            victim.scope.cancel()
            self.evicted += 1
        slot = Slot(trio.CancelScope())
        self.slots.add(slot)
        return slot

    def close(self, slot: Slot) -> None:
        self.slots.discard(slot)
