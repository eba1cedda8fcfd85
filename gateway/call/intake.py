"""What the receive task takes from the socket, and how the processor's side of the inbound
channel is timed. `gateway.call.tasks` uses these; nothing here knows the layout.

Owns: the per-read flood gate (`Intake`, over `gateway.limits.FloodGate`: messages beyond
`max_frames_per_second`, pings included, are dropped unread and counted, and a flood lasting
`flood_grace` raises `Flooded`), the malformed-packet policy (`ErrorPolicy`: a `ProtocolError`
is counted by reason and skipped, unknown kinds are ignored, `max_consecutive_errors` in a row
raise `TooManyErrors`), and `TimedPackets`, the processing-latency clock on the inbound channel.
Never: awaits, sockets of its own, or closing a call (the call decides what an exception means).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..acs.codec import InboundDecoder
from ..acs.packets import InboundPacket
from ..errors import Flooded, ProtocolError, TooManyErrors
from ..wire.events import Message
from ..wire.websocket import ServerWebSocket
from .interface import CallStats
from .limits import FloodGate
from .settings import CallSettings

__all__ = ["ErrorPolicy", "Flooded", "Intake", "TimedPackets", "TooManyErrors"]


class TimedPackets(trio.abc.ReceiveChannel[InboundPacket]):
    """The inbound channel as the processor sees it, timing each packet from its arrival
    (`arrivals`, appended by the receive task in channel order) to the processor taking it.
    About 1 us a packet: one clock reading (the clock's own method, not the run-context
    lookup of `trio.current_time`), one pop, one `LocalHistogram` observation.

    `arrivals` is a list, not a deque: it holds at most the channel's few packets (none,
    mostly), where a deque's first block alone costs ~0.6 KB a call."""

    __slots__ = ("_channel", "_arrivals", "_observe", "_now")  # one per call

    def __init__(
        self,
        channel: trio.MemoryReceiveChannel[InboundPacket],
        arrivals: list[float],
        observe: Callable[[float], None],
    ) -> None:
        self._channel = channel
        self._arrivals = arrivals
        self._observe = observe
        self._now = trio.lowlevel.current_clock().current_time

    async def receive(self) -> InboundPacket:
        packet = await self._channel.receive()
        if self._arrivals:
            self._observe(self._now() - self._arrivals.pop(0))
        return packet

    async def __anext__(self) -> InboundPacket:  # the processor's `async for`: one hop, not two
        try:
            packet = await self._channel.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if self._arrivals:
            self._observe(self._now() - self._arrivals.pop(0))
        return packet

    def receive_nowait(self) -> InboundPacket:
        packet = self._channel.receive_nowait()
        if self._arrivals:
            self._observe(self._now() - self._arrivals.pop(0))
        return packet

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._channel.statistics()

    def close(self) -> None:
        self._channel.close()

    async def aclose(self) -> None:
        await self._channel.aclose()


class Intake:
    """What the call takes from each read: the flood gate, and when audio was last heard."""

    __slots__ = ("gate", "stats", "log", "ws", "pings", "now", "heard")

    def __init__(
        self,
        settings: CallSettings,
        stats: CallStats,
        log: logging.LoggerAdapter[logging.Logger],
        ws: ServerWebSocket,
    ) -> None:
        self.now = self.heard = trio.current_time()
        self.gate = FloodGate(settings.max_frames_per_second, settings.flood_grace, self.now)
        self.stats = stats
        self.log = log
        self.ws = ws
        self.pings = 0  # the WebSocket's pings_received already counted

    def admit(self, messages: list[Message]) -> list[Message]:
        self.now = now = trio.current_time()
        gate = self.gate
        pings = self.ws.pings_received - self.pings  # already answered: they spend the budget
        self.pings += pings
        count = len(messages) + pings
        taken = gate.admit(count, now)
        if taken == count:
            return messages
        kept = max(0, taken - pings)
        if not gate.dropped - (count - taken):  # the first drop of the call
            self.log.warning("inbound flood: dropping messages beyond %g a second", gate.rate)
        self.stats.frames_flood_dropped += len(messages) - kept
        if gate.persistent(now):
            self.log.warning("inbound flood for %g s; closing", gate.grace)
            raise Flooded
        return messages[:kept]


class ErrorPolicy:
    """Decode with the call's malformed-packet policy (see the module docstring)."""

    __slots__ = ("limit", "stats", "log", "consecutive")

    def __init__(self, limit: int, stats: CallStats, log: logging.LoggerAdapter[logging.Logger]):
        self.limit = limit
        self.stats = stats
        self.log = log
        self.consecutive = 0

    def decode(self, decoder: InboundDecoder, message: Message) -> InboundPacket | None:
        try:
            packet = decoder.decode(message)
        except ProtocolError as exc:
            self.stats.protocol_errors[exc.reason] += 1
            # A newer ACS feature: ignore it (docs/protocol.md, "Inbound: unknown and malformed
            # messages").
            if exc.reason == "unknown_kind":
                if self.stats.protocol_errors[exc.reason] == 1:
                    self.log.info("ignoring packets of an unknown kind: %s", exc)
                return None
            first = self.stats.protocol_errors[exc.reason] == 1
            self.log.log(
                logging.WARNING if first else logging.DEBUG, "skipping a malformed packet: %s", exc
            )
            self.consecutive += 1
            if self.consecutive >= self.limit:
                self.log.warning("%d malformed packets in a row; closing", self.consecutive)
                raise TooManyErrors from exc
            return None
        self.consecutive = 0
        return packet
