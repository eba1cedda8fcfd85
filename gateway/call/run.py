"""One call: the nursery that owns it, and its three tasks. Only this module knows the layout.

    receive task: ws messages -> InboundDecoder -> packets --[inbound channel]--> processor task
    processor task: processor(call): reads packets, calls call.player.play() / stop()
    send task: player releases frames on the playout clock -> codec -> ws (one write per batch)

Channel policies (see the README, "Architecture"):
- inbound channel, bounded at `inbound_queue_ms` of audio frames. Audio that does not fit is
  dropped and counted (the processor fell behind; the socket reader must not stall). Every
  other packet (metadata, DTMF, transcription) waits for room: never dropped.
- outbound: the player's queue, bounded in seconds; `play()` blocks when full.
- player -> ACS: at most the lead window ahead of real time; the send task waits for the clock.

Lifecycle. The call ends when ACS closes or resets the socket, or when the processor returns
(or fails). On hang-up the inbound channel is closed (the processor's `async for` ends), the
send task stops, and the processor gets `hangup_grace` seconds to return before it is
cancelled. When the processor returns we close with 1000; when it raises, with 1011. Either way
`run_call` returns only after every task has ended; the caller closes the stream.

Malformed packets (`ProtocolError`; the policy is `gateway.intake.ErrorPolicy`): counted by
reason in `CallStats.protocol_errors`, logged (the first of each reason at WARNING, later ones
at DEBUG), and skipped. After
`max_consecutive_errors` malformed packets with no good one between, the call is closed with
1007. Nothing raised by a packet escapes the call.

Limits (README, "Bad input policy"): inbound messages beyond `max_frames_per_second` (pings
count too) are dropped unread and counted (`frames_flood_dropped`; see
`gateway.intake.Intake`), and a flood that lasts `flood_grace` seconds closes the call with
1008. A watchdog task closes the call (1000) after `idle_timeout` seconds without inbound audio
(without any packet on a transcription-only stream) and at `max_call_duration`. A write the
peer does not take within the WebSocket's `send_timeout` ends the call at once (`send_timeout`,
no close frame: the server resets the socket).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..acs import codec
from ..acs.codec import InboundDecoder
from ..acs.packets import FRAME_MS, AudioData, AudioMetadata, InboundPacket, TranscriptionMetadata
from ..errors import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
)
from ..wire.websocket import ConnectionClosed, Handshake, SendTimeout, ServerWebSocket
from .intake import ErrorPolicy, Flooded, Intake, TimedPackets, TooManyErrors
from .interface import Call, CallStats, Processor
from .pacer import Pacer
from .player import Player
from .playout import Playout

CLOSE_TIMEOUT: Final = 2.0  # seconds the closing handshake may take once the call is over


@attrs.frozen
class CallSettings:
    """The per-call part of the configuration (see `gateway.config.Config`)."""

    inbound_queue_ms: int = 1000
    playout_lead_ms: int = 60
    playout_queue_ms: int = 5000
    metadata_timeout: float = 10.0
    hangup_grace: float = 2.0
    max_consecutive_errors: int = 50
    # Limits (issue 5): see the module docstring.
    max_frames_per_second: int = 250
    flood_grace: float = 5.0
    idle_timeout: float = 300.0
    max_call_duration: float = 14400.0


@attrs.define
class CallOutcome:
    """How a call ended: `ended_by` is hangup, processor, processor_error, protocol, timeout,
    flood, idle, max_duration, send_timeout, or cancelled (the server drained it)."""

    ended_by: str
    close_code: int | None
    stats: CallStats
    call: Call | None = None
    error: BaseException | None = None


@attrs.frozen
class CallTimings:
    """Where a call reports its timings, in seconds (`gateway.ops.metrics` provides them).

    - `processing`: per inbound packet, from the socket read that completed it to the moment
      the processor took it from the inbound channel.
    - `pacing_lateness`: per release by the send task after sleeping until a playout deadline,
      how late it ran.
    """

    processing: Callable[[float], None]
    pacing_lateness: Callable[[float], None]


async def run_call(
    ws: ServerWebSocket,
    handshake: Handshake,
    processor: Processor,
    settings: CallSettings,
    log: logging.LoggerAdapter[logging.Logger],
    pacer: Pacer | None = None,
    stats: CallStats | None = None,
    timings: CallTimings | None = None,
) -> CallOutcome:
    """Run one accepted media stream to its end. Never raises for anything the peer or the
    processor did; a bug in the gateway itself propagates to the server's error boundary.
    `stats`: where to count (the server reads it while the call is live)."""
    stats = CallStats() if stats is None else stats
    decoder = InboundDecoder()
    errors = ErrorPolicy(settings.max_consecutive_errors, stats, log)
    intake = Intake(settings, stats, log, ws)
    end_at = intake.heard + settings.max_call_duration

    # 1. Wait for the stream's first metadata: it says what the call carries.
    early: list[tuple[InboundPacket, float]] = []  # with their arrival times
    first: AudioMetadata | TranscriptionMetadata | None = None
    with trio.move_on_at(trio.current_time() + settings.metadata_timeout):
        try:
            while first is None:
                for message in intake.admit(await ws.receive_messages()):
                    packet = errors.decode(decoder, message)
                    if packet is None:
                        continue
                    if first is None and isinstance(packet, AudioMetadata | TranscriptionMetadata):
                        first = packet
                    else:  # came in the same read as the metadata: counted like the rest
                        stats.packets_in += 1
                        stats.audio_frames_in += type(packet) is AudioData
                        early.append((packet, intake.now))
        except ConnectionClosed as closed:
            log.info("ACS closed before any metadata (%s)", closed.code)
            return CallOutcome("hangup", closed.code, stats)
        except TooManyErrors:
            await ws.close(CLOSE_INVALID_PAYLOAD, "too many malformed packets")
            return CallOutcome("protocol", CLOSE_INVALID_PAYLOAD, stats)
        except Flooded:
            await ws.close(CLOSE_POLICY_VIOLATION, "inbound message flood")
            return CallOutcome("flood", CLOSE_POLICY_VIOLATION, stats)
    if first is None:
        log.warning("no metadata within %.1f s; closing", settings.metadata_timeout)
        await ws.close(CLOSE_INVALID_PAYLOAD, "no AudioMetadata")
        return CallOutcome("timeout", CLOSE_INVALID_PAYLOAD, stats)

    audio = first if isinstance(first, AudioMetadata) else None
    player = None
    if audio is not None:
        player = Player(
            Playout(
                audio.sample_rate,
                lead_ms=settings.playout_lead_ms,
                capacity_ms=settings.playout_queue_ms,
            ),
            pacer=pacer,
            direct=ws.direct_sink(codec.encode_audio, stats),
            on_late=None if timings is None else timings.pacing_lateness,
        )
    audio_slots = max(1, math.ceil(settings.inbound_queue_ms / FRAME_MS))
    inbound_send, inbound_receive = trio.open_memory_channel[InboundPacket](audio_slots)
    # Arrival times of the packets in the inbound channel, in the same order (timings only).
    arrivals: deque[float] | None = None
    packets: trio.abc.ReceiveChannel[InboundPacket] = inbound_receive
    if timings is not None:
        arrivals = deque()
        packets = TimedPackets(inbound_receive, arrivals, timings.processing)
    call = Call(
        connection_id=handshake.headers.get("x-ms-call-connection-id"),
        correlation_id=handshake.headers.get("x-ms-call-correlation-id"),
        path=handshake.target,
        headers=handshake.headers,
        audio=audio,
        transcription=first if isinstance(first, TranscriptionMetadata) else None,
        packets=packets,
        player=player,
        log=log,
        stats=stats,
    )
    outcome = CallOutcome("", None, stats, call)

    def ended(by: str, code: int | None) -> None:
        """The first reason the call ended is the one reported."""
        if not outcome.ended_by:
            outcome.ended_by, outcome.close_code = by, code

    def give_up(closed: SendTimeout) -> None:
        """The peer stopped reading: end the call now, without a close frame."""
        ended("send_timeout", CLOSE_ABNORMAL)
        log.warning("closing the call: %s", closed.reason)
        if player is not None:
            player.close()
        call_scope.cancel()

    log.info(
        "call started: %s",
        f"{audio.sample_rate} Hz audio" if audio is not None else "transcription only",
    )

    async def receive() -> None:
        """Read ACS until it hangs up; route packets by the inbound channel policy."""
        async with inbound_send:  # closing it ends the processor's `async for`
            try:
                for packet, arrived in early:
                    if arrivals is not None:
                        arrivals.append(arrived)
                    await inbound_send.send(packet)
                while True:
                    for message in intake.admit(await ws.receive_messages()):
                        packet = errors.decode(decoder, message)
                        if packet is None:
                            continue
                        stats.packets_in += 1
                        if type(packet) is AudioData:
                            intake.heard = intake.now
                            stats.audio_frames_in += 1
                            try:
                                inbound_send.send_nowait(packet)
                            except trio.WouldBlock:
                                stats.audio_frames_dropped += 1
                                if stats.audio_frames_dropped == 1:
                                    log.warning("processor is behind: dropping inbound audio")
                                continue
                            if arrivals is not None:
                                arrivals.append(intake.now)  # when the read returned
                        else:
                            if audio is None:  # a transcription stream is alive while it talks
                                intake.heard = intake.now
                            if arrivals is not None:  # before: the processor may run first
                                arrivals.append(intake.now)
                            await inbound_send.send(packet)
            except SendTimeout as closed:  # a pong the peer would not take
                give_up(closed)
            except ConnectionClosed as closed:
                ended("hangup", closed.code)
                reason = f": {closed.reason}" if closed.reason else ""
                log.info("ACS hung up (%s%s)", closed.code, reason)
                # The processor sees the end of `packets` and gets a grace period to finish.
                sending.cancel()
                if player is not None:
                    player.close()
                call_scope.deadline = min(
                    call_scope.deadline, trio.current_time() + settings.hangup_grace
                )
            except TooManyErrors:
                ended("protocol", CLOSE_INVALID_PAYLOAD)
                await _close(ws, CLOSE_INVALID_PAYLOAD, "too many malformed packets")
                call_scope.cancel()
            except Flooded:
                ended("flood", CLOSE_POLICY_VIOLATION)
                await _close(ws, CLOSE_POLICY_VIOLATION, "inbound message flood")
                call_scope.cancel()

    async def watch() -> None:
        """Close the call when it has been idle too long or has lasted too long."""
        while not outcome.ended_by:
            idle_at = intake.heard + settings.idle_timeout
            await trio.sleep_until(min(idle_at, end_at))
            now = trio.current_time()
            if outcome.ended_by:
                return
            if now >= end_at:
                by, why = "max_duration", f"the call reached {settings.max_call_duration:g} s"
            elif now >= intake.heard + settings.idle_timeout:
                by, why = "idle", f"no inbound audio for {settings.idle_timeout:g} s"
            else:
                continue  # audio came in meanwhile: sleep until the new deadline
            ended(by, CLOSE_NORMAL)
            log.info("closing the call: %s", why)
            await _close(ws, CLOSE_NORMAL, why)
            call_scope.cancel()

    async def send() -> None:
        """Release the player's frames to ACS on the playout clock."""
        assert player is not None
        encode_audio = codec.encode_audio
        while True:
            stop, frames = await player.next_release()
            messages = [codec.STOP_AUDIO_MESSAGE] if stop else []
            messages += [encode_audio(pcm) for pcm in frames]
            try:
                await ws.send_messages(messages)
            except ConnectionClosed as closed:
                player.playout.not_sent(frames)
                if isinstance(closed, SendTimeout):
                    give_up(closed)
                return  # otherwise the receive task sees the same and ends the call
            stats.messages_out += len(messages)
            stats.stop_audio_sent += stop

    async def process() -> None:
        nonlocal processor_returned
        try:
            await processor(call)
        except Exception as exc:  # the processor's bug ends its own call, nothing else
            log.exception("processor failed: %r", exc)
            outcome.error = exc
            if not outcome.ended_by:
                ended("processor_error", CLOSE_INTERNAL_ERROR)
                await _close(ws, CLOSE_INTERNAL_ERROR, "processor error")
        else:
            if not outcome.ended_by:
                ended("processor", CLOSE_NORMAL)
                await _close(ws, CLOSE_NORMAL, "")
        processor_returned = True
        call_scope.cancel()

    processor_returned = False
    try:
        async with trio.open_nursery() as nursery:
            call_scope = nursery.cancel_scope
            nursery.start_soon(receive)
            nursery.start_soon(watch)
            sending = trio.CancelScope()
            if player is not None:
                nursery.start_soon(_run_in(sending, send))
            nursery.start_soon(process)
    finally:
        stats.packets_unread = inbound_receive.statistics().current_buffer_used
        inbound_receive.close()
        if player is not None:
            player.close()
    if stats.packets_unread or (player is not None and player.playout.stats.unsent_at_end):
        log.info(
            "at the end of the call %d inbound packets were unread and %d bytes of audio unsent",
            stats.packets_unread,
            0 if player is None else player.playout.stats.unsent_at_end,
        )
    if not outcome.ended_by:  # cancelled from outside (server drain)
        ended("cancelled", None)
    if not processor_returned and outcome.ended_by == "hangup":
        log.warning("processor did not return within %.1f s of hang-up", settings.hangup_grace)
    return outcome


def _run_in(scope: trio.CancelScope, fn: Callable[[], object]) -> Callable[[], object]:
    async def run() -> None:
        with scope:
            await fn()  # type: ignore[misc]

    return run


async def _close(ws: ServerWebSocket, code: int, reason: str) -> None:
    with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
        await ws.close(code, reason)

