"""Per-call limits that need bookkeeping: the inbound flood gate. Sans-IO: it is given the time.

Owns: deciding how many of the messages one read produced a call may take. Never: sockets,
clocks, closing calls (the call does that when `persistent` says so).

The gate is a token bucket over inbound WebSocket messages (ACS frames): `rate` messages a
second, with bursts of up to one second's worth, so a peer that catches up after a network
stall (a second of frames at once) is not punished. Messages beyond the bucket are dropped
unread and counted. A *flood* starts at the first drop and lasts while drops keep coming less
than `FLOOD_QUIET` seconds apart; a flood that has lasted `grace` seconds is `persistent`, and
the call closes it with 1008 (policy violation).
"""

from __future__ import annotations

from typing import Final

FLOOD_QUIET: Final = 1.0  # seconds without a drop that end a flood


class FloodGate:
    __slots__ = ("rate", "grace", "tokens", "updated", "flood_started", "last_drop", "dropped")

    def __init__(self, rate: float, grace: float, now: float) -> None:
        self.rate = rate
        self.grace = grace
        self.tokens = rate  # a full bucket: one second of messages
        self.updated = now
        self.flood_started: float | None = None
        self.last_drop = -float("inf")
        self.dropped = 0  # messages dropped over the call

    def admit(self, count: int, now: float) -> int:
        """How many of `count` messages that arrived at `now` the call may take (the first ones);
        the rest are dropped and counted in `dropped`."""
        tokens = self.tokens + (now - self.updated) * self.rate
        if tokens > self.rate:
            tokens = self.rate
        self.updated = now
        if count <= tokens:  # the usual case: well within the budget
            self.tokens = tokens - count
            return count
        taken = int(tokens)
        self.tokens = tokens - taken
        self.dropped += count - taken
        if self.flood_started is None or now - self.last_drop >= FLOOD_QUIET:
            self.flood_started = now
        self.last_drop = now
        return taken

    def persistent(self, now: float) -> bool:
        """True if the current flood has gone on for `grace` seconds."""
        return (
            self.flood_started is not None
            and now - self.last_drop < FLOOD_QUIET
            and now - self.flood_started >= self.grace
        )
