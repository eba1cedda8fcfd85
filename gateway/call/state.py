"""`CallState`: the one object a call's tasks share, and the packet-reading routine they use.

Owns: how the call ended (the first `end` wins), the cancel scopes of the call and of its send
task, the intake (flood gate, malformed-packet policy), and `read_packets`, which both the wait
for the first metadata and the receive task read the socket through.
Never: starts tasks (that is `gateway.call.run`) or decides a channel policy (`tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..acs.codec import InboundDecoder
from ..acs.packets import InboundPacket
from ..errors import CLOSE_INVALID_PAYLOAD, CLOSE_POLICY_VIOLATION
from ..wire.websocket import ServerWebSocket
from .intake import ErrorPolicy, Flooded, Intake, TooManyErrors
from .interface import Call, CallStats
from .observer import NO_OBSERVER, CallObserver
from .outcome import CallOutcome, EndReason
from .player import Player
from .settings import CallSettings

CLOSE_TIMEOUT: Final = 2.0  # seconds the closing handshake may take once the call is over


@attrs.define(eq=False)
class CallState:
    """One call's shared state. Built before the first metadata; `player` and `arrivals` are
    set once the metadata says what the call carries."""

    ws: ServerWebSocket
    settings: CallSettings
    log: logging.LoggerAdapter[logging.Logger]
    stats: CallStats
    intake: Intake = attrs.field(init=False)
    errors: ErrorPolicy = attrs.field(init=False)
    decoder: InboundDecoder = attrs.field(init=False, factory=InboundDecoder)
    ends_at: float = attrs.field(init=False)  # `max_call_duration` after the upgrade
    # Packets read with the first metadata (and their arrival times), for the inbound channel.
    early: list[tuple[InboundPacket, float]] = attrs.field(init=False, factory=list)
    player: Player | None = attrs.field(init=False, default=None)  # None: transcription only
    # Arrival times of the packets in the inbound channel, in channel order (timings only).
    arrivals: list[float] | None = attrs.field(init=False, default=None)
    # Told each packet's processing latency (`CallTimings.processing`), if timings are kept.
    processing: Callable[[float], None] | None = attrs.field(init=False, default=None)
    # The run's clock, read directly (not through `trio.current_time`'s run-context lookup).
    clock: Callable[[], float] = attrs.field(
        init=False, factory=lambda: trio.lowlevel.current_clock().current_time
    )
    scope: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)  # the call
    sending: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)  # send task
    ended_by: EndReason | None = attrs.field(init=False, default=None)
    close_code: int | None = attrs.field(init=False, default=None)
    error: BaseException | None = attrs.field(init=False, default=None)  # the processor's
    processor_returned: bool = attrs.field(init=False, default=False)
    observer: CallObserver = NO_OBSERVER  # keeps the call's record

    def __attrs_post_init__(self) -> None:
        self.intake = Intake(self.settings, self.stats, self.log, self.ws)
        self.errors = ErrorPolicy(self.settings.max_consecutive_errors, self.stats, self.log)
        self.ends_at = self.intake.heard + self.settings.max_call_duration

    def end(self, by: EndReason, code: int | None) -> bool:
        """Record how the call ended; only the first reason counts. True if this was it."""
        if self.ended_by is not None:
            return False
        self.ended_by, self.close_code = by, code
        return True

    def outcome(self, call: Call | None = None) -> CallOutcome:
        return CallOutcome(
            EndReason.CANCELLED if self.ended_by is None else self.ended_by,
            self.close_code,
            self.stats,
            call,
            self.error,
        )

    async def read_packets(self) -> list[InboundPacket]:
        """The packets of the next read: past the flood gate (raises `Flooded`), decoded under
        the malformed-packet policy (skips them; raises `TooManyErrors`). Raises
        `ConnectionClosed` when ACS hangs up."""
        decode, decoder = self.errors.decode, self.decoder
        packets = []
        for message in self.intake.admit(await self.ws.receive_messages()):
            packet = decode(decoder, message)
            if packet is not None:
                packets.append(packet)
        return packets

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake, bounded and shielded: the call is over whatever happens."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            await self.ws.close(code, reason)


def refusal(exc: TooManyErrors | Flooded) -> tuple[EndReason, int, str]:
    """What bad input earns: the end reason, the close code and the close frame's reason."""
    if isinstance(exc, TooManyErrors):
        return EndReason.PROTOCOL, CLOSE_INVALID_PAYLOAD, "too many malformed packets"
    return EndReason.FLOOD, CLOSE_POLICY_VIOLATION, "inbound message flood"
