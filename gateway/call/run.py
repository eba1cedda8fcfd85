"""One call: the nursery that owns it and its four tasks. Only this module knows the layout;
what each task does is in `gateway.call.tasks`, what they share in `gateway.call.state`.

    receive task: ws messages -> InboundDecoder -> packets --[inbound channel]--> process task
                  (audio frames to the processor's inline audio handler instead, if it has one)
    process task: processor(call): reads packets, calls call.player.play() / stop()
    send task: player releases frames on the playout clock -> codec -> ws (one write per batch)
    watch task: closes the call when it is idle or has lasted too long

Channel policies (see docs/architecture.md, "Bounded channels, each with a declared policy"):
- inbound channel, bounded at `inbound_queue_ms` of audio frames. Audio that does not fit is
  dropped and counted (the processor fell behind; the socket reader must not stall). Every
  other packet (metadata, DTMF, transcription) waits for room: never dropped.
- outbound: the player's queue, bounded in seconds; `play()` blocks when full.
- player -> ACS: at most the lead window ahead of real time; the send task waits for the clock.

Lifecycle. The call ends when ACS closes or resets the socket, or when the processor returns
(or fails). On hang-up the inbound channel is closed (the processor's `async for` ends), the
send task stops, and the processor gets `hangup_grace` seconds to return before it is
cancelled. When the processor returns we close with 1000; when it raises, with 1011. Either way
`run_call` returns only after every task has ended; the caller closes the stream. The first
reason the call ended (an `EndReason`) is the one reported.

Malformed packets (`ProtocolError`; the policy is `gateway.call.intake.ErrorPolicy`): counted by
reason in `CallStats.protocol_errors`, logged (the first of each reason at WARNING, later ones
at DEBUG), and skipped. After `max_consecutive_errors` malformed packets with no good one
between, the call is closed with 1007. Nothing raised by a packet escapes the call.

Limits (docs/security.md, "Bad input policy"): inbound messages beyond `max_frames_per_second`
(pings count too) are dropped unread and counted (`frames_flood_dropped`; see
`gateway.call.intake.Intake`), and a flood that lasts `flood_grace` seconds closes the call with
1008. A watchdog task closes the call (1000) after `idle_timeout` seconds without inbound audio
(without any packet on a transcription-only stream) and at `max_call_duration`. A write the peer
does not take within the WebSocket's `send_timeout` ends the call at once (`send_timeout`, no
close frame: the server resets the socket).
"""

from __future__ import annotations

import logging
import math

import trio

from ..acs import codec
from ..acs.packets import FRAME_MS, AudioMetadata, InboundPacket, TranscriptionMetadata
from ..wire.websocket import Handshake, ServerWebSocket
from .intake import TimedPackets
from .interface import Call, CallControlHandle, CallStats, Processor
from .observer import NO_OBSERVER, CallObserver
from .outcome import CallOutcome, CallTimings, EndReason
from .pacer import Pacer
from .player import Player
from .playout import Playout
from .settings import CallSettings
from .state import CallState
from .tasks import process, receive, send, wait_for_metadata, watch

__all__ = ["CallOutcome", "CallSettings", "CallTimings", "EndReason", "run_call"]

# The tasks' names, as trio would make them, made once: trio formats a new string for every
# task it starts without one (~80 bytes a task, held for the call).
_NAMES = {
    task: f"{task.__module__}.{task.__qualname__}" for task in (receive, watch, send, process)
}


async def run_call(
    ws: ServerWebSocket,
    handshake: Handshake,
    processor: Processor,
    settings: CallSettings,
    log: logging.LoggerAdapter[logging.Logger],
    pacer: Pacer | None = None,
    stats: CallStats | None = None,
    timings: CallTimings | None = None,
    observer: CallObserver = NO_OBSERVER,
    control: CallControlHandle | None = None,
) -> CallOutcome:
    """Run one accepted media stream to its end. Never raises for anything the peer or the
    processor did; a bug in the gateway itself propagates to the server's error boundary.
    `stats`: where to count (the server reads it while the call is live). `observer`: told of
    the call's audio and events from the first metadata to the end (its record). `control`:
    the call's control handle (`Call.control`) when this gateway answered it."""
    state = CallState(ws, settings, log, CallStats() if stats is None else stats, observer)
    first = await wait_for_metadata(state)
    if first is None:
        return state.outcome()
    log.debug("metadata: %s", first)
    audio = first if isinstance(first, AudioMetadata) else None
    if audio is not None:
        playout = Playout(
            audio.sample_rate,
            lead_ms=settings.playout_lead_ms,
            capacity_ms=settings.playout_queue_ms,
            catchup_ms=settings.playout_catchup_ms,
            step_ms=settings.playout_step_ms,
        )
        on_late = None if timings is None else timings.pacing_lateness
        state.player = Player(
            playout,
            pacer=pacer,
            direct=ws.direct_sink(codec.encode_audio, codec.STOP_AUDIO_MESSAGE, state.stats),
            on_late=on_late,
            observer=observer,
        )
    audio_slots = max(1, math.ceil(settings.inbound_queue_ms / FRAME_MS))
    inbound_send, inbound_receive = trio.open_memory_channel[InboundPacket](audio_slots)
    packets: trio.abc.ReceiveChannel[InboundPacket] = inbound_receive
    if timings is not None:
        state.arrivals = []
        state.processing = timings.processing
        packets = TimedPackets(inbound_receive, state.arrivals, timings.processing)
    call = Call(
        connection_id=handshake.headers.get("x-ms-call-connection-id"),
        correlation_id=handshake.headers.get("x-ms-call-correlation-id"),
        path=handshake.target,
        headers=handshake.headers,
        audio=audio,
        transcription=first if isinstance(first, TranscriptionMetadata) else None,
        packets=packets,
        player=state.player,
        log=log,
        stats=state.stats,
        observer=observer,
        control=control,
    )
    carries = f"{audio.sample_rate} Hz audio" if audio is not None else "transcription only"
    log.info("call started: %s", carries)
    observer.started(call, trio.current_time())
    try:
        with state.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    receive, state, inbound_send, processor, call, name=_NAMES[receive]
                )
                nursery.start_soon(watch, state, name=_NAMES[watch])
                if state.player is not None:
                    nursery.start_soon(send, state, state.player, name=_NAMES[send])
                nursery.start_soon(process, state, processor, call, name=_NAMES[process])
    finally:
        state.stats.packets_unread = inbound_receive.statistics().current_buffer_used
        inbound_receive.close()
        if state.player is not None:
            state.player.close()
        observer.ended(state.outcome(call), trio.current_time())
    _log_leftovers(state)
    return state.outcome(call)


def _log_leftovers(state: CallState) -> None:
    """What the call left behind: unread packets, unsent audio, a processor that overstayed."""
    unsent = 0 if state.player is None else state.player.playout.stats.unsent_at_end
    if state.stats.packets_unread or unsent:
        state.log.info(
            "at the end of the call %d inbound packets were unread and %d bytes of audio unsent",
            state.stats.packets_unread,
            unsent,
        )
    if not state.processor_returned and state.ended_by == EndReason.HANGUP:
        grace = state.settings.hangup_grace
        state.log.warning("processor did not return within %.1f s of hang-up", grace)
