"""What a call does, one function each: the wait for the first metadata, then the four tasks
`gateway.call.run` starts in the call's nursery (receive, watch, send, process).

Owns: the channel policies, the close codes, and which end reason each event earns (the
first one recorded in `CallState` wins). Never: opens a nursery or starts a task; each
function here runs in the task `run_call` gave it and shares only `CallState`.
"""

from __future__ import annotations

import trio

from ..acs import codec
from ..acs.packets import AudioData, AudioMetadata, InboundPacket, TranscriptionMetadata
from ..errors import CLOSE_ABNORMAL, CLOSE_INTERNAL_ERROR, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL
from ..wire.websocket import ConnectionClosed, SendTimeout
from .intake import Flooded, TooManyErrors
from .interface import AudioHandler, Call, Processor, inline_audio_handler
from .outcome import EndReason
from .player import Player
from .state import CallState, refusal


async def wait_for_metadata(state: CallState) -> AudioMetadata | TranscriptionMetadata | None:
    """Read until the stream's first metadata, which says what the call carries. Packets read
    with it (or before it) wait in `state.early`, counted like the rest. None: the call ended
    before it (`state.ended_by` says how)."""
    stats, intake = state.stats, state.intake
    with trio.move_on_at(trio.current_time() + state.settings.metadata_timeout):
        try:
            while True:
                first = None
                for packet in await state.read_packets():
                    if first is None and isinstance(packet, AudioMetadata | TranscriptionMetadata):
                        first = packet
                    else:
                        stats.packets_in += 1
                        stats.audio_frames_in += type(packet) is AudioData
                        state.early.append((packet, intake.now))
                if first is not None:
                    return first
        except ConnectionClosed as closed:
            state.log.info("ACS closed before any metadata (%s)", closed.code)
            state.end(EndReason.HANGUP, closed.code)
            return None
        except (TooManyErrors, Flooded) as exc:
            by, code, why = refusal(exc)
            state.end(by, code)
            await state.ws.close(code, why)
            return None
    state.log.warning("no metadata within %.1f s; closing", state.settings.metadata_timeout)
    state.end(EndReason.TIMEOUT, CLOSE_INVALID_PAYLOAD)
    await state.ws.close(CLOSE_INVALID_PAYLOAD, "no AudioMetadata")
    return None


async def receive(
    state: CallState,
    inbound: trio.MemorySendChannel[InboundPacket],
    processor: Processor,
    call: Call,
) -> None:
    """Read ACS until it hangs up; route packets by the inbound channel policy: audio that
    does not fit is dropped and counted, every other packet waits for room. Audio goes to the
    processor's inline handler instead, if it offers one; what that refuses is dropped and
    counted too."""
    stats, intake, arrivals = state.stats, state.intake, state.arrivals
    observer = state.observer
    talk_is_life = state.player is None  # a transcription stream is alive while it talks
    packet: InboundPacket | None = None
    async with inbound:  # closing it ends the processor's `async for`
        try:
            hear = inline_audio_handler(processor, call)
        except Exception as exc:  # the processor's bug, as if its coroutine had raised it
            await processor_failed(state, exc)
            return
        try:
            for packet, arrived in state.early:
                if type(packet) is AudioData:
                    observer.caller_audio(packet, arrived)
                    if hear is not None:
                        failure = give(state, hear, packet, arrived)
                        if failure is not None:
                            await processor_failed(state, failure)
                            return
                        continue
                else:
                    observer.caller_packet(packet, arrived)
                if arrivals is not None:
                    arrivals.append(arrived)
                await inbound.send(packet)
            state.early.clear()  # handed over: not held for the rest of the call
            while True:
                for packet in await state.read_packets():
                    stats.packets_in += 1
                    if type(packet) is AudioData:
                        intake.heard = intake.now
                        stats.audio_frames_in += 1
                        observer.caller_audio(packet, intake.now)  # what was said, even if dropped
                        if hear is not None:
                            failure = give(state, hear, packet, intake.now)
                            if failure is not None:
                                await processor_failed(state, failure)
                                return
                            continue
                        try:
                            inbound.send_nowait(packet)
                        except trio.WouldBlock:
                            dropped(state)
                            continue
                        if arrivals is not None:
                            arrivals.append(intake.now)  # when the read returned
                    else:
                        observer.caller_packet(packet, intake.now)
                        if talk_is_life:
                            intake.heard = intake.now
                        if arrivals is not None:  # before: the processor may run first
                            arrivals.append(intake.now)
                        await inbound.send(packet)
                # The last packet (a frame and its wire text, ~1.7 KB) is not held while the
                # next read waits: it is the processor's now, or was dropped.
                packet = None
        except SendTimeout as closed:  # a pong the peer would not take
            give_up(state, closed)
        except ConnectionClosed as closed:
            hung_up(state, closed)
        except (TooManyErrors, Flooded) as exc:
            by, code, why = refusal(exc)
            state.end(by, code)
            await state.close(code, why)
            state.scope.cancel()


def give(
    state: CallState, hear: AudioHandler, frame: AudioData, arrived: float
) -> Exception | None:
    """Give a frame to the processor's inline audio handler, timed like a packet the
    processor takes from the inbound channel; a refused frame is dropped and counted. Returns
    what the handler raised (the processor's bug), if it raised."""
    try:
        taken = hear(frame)
    except Exception as exc:
        return exc
    if not taken:
        dropped(state)
    if state.processing is not None:
        state.processing(state.clock() - arrived)
    return None


def dropped(state: CallState) -> None:
    """An inbound audio frame the processor could not take: counted, and told once."""
    state.stats.audio_frames_dropped += 1
    if state.stats.audio_frames_dropped == 1:
        state.log.warning("processor is behind: dropping inbound audio")


def hung_up(state: CallState, closed: ConnectionClosed) -> None:
    """ACS hung up: the processor sees the end of `packets` and gets a grace period to finish;
    nothing more is sent."""
    reason = f": {closed.reason}" if closed.reason else ""
    if state.end(EndReason.HANGUP, closed.code):
        state.log.info("ACS hung up (%s%s)", closed.code, reason)
    else:  # ACS answering the close of a call that had already ended (by the processor, ...)
        state.log.debug(
            "ACS closed its end (%s%s); ended by %s", closed.code, reason, state.ended_by
        )
    state.sending.cancel()
    if state.player is not None:
        state.player.close()
    grace_ends = trio.current_time() + state.settings.hangup_grace
    state.scope.deadline = min(state.scope.deadline, grace_ends)


def give_up(state: CallState, closed: SendTimeout) -> None:
    """The peer stopped reading: end the call now, without a close frame."""
    state.end(EndReason.SEND_TIMEOUT, CLOSE_ABNORMAL)
    state.log.warning("closing the call: %s", closed.reason)
    if state.player is not None:
        state.player.close()
    state.scope.cancel()


async def watch(state: CallState) -> None:
    """Close the call when it has been idle too long or has lasted too long."""
    settings, intake = state.settings, state.intake
    while state.ended_by is None:
        await trio.sleep_until(min(intake.heard + settings.idle_timeout, state.ends_at))
        now = trio.current_time()
        if state.ended_by is not None:
            return
        if now >= state.ends_at:
            by, why = EndReason.MAX_DURATION, f"the call reached {settings.max_call_duration:g} s"
        elif now >= intake.heard + settings.idle_timeout:
            by, why = EndReason.IDLE, f"no inbound audio for {settings.idle_timeout:g} s"
        else:
            continue  # audio came in meanwhile: sleep until the new deadline
        state.end(by, CLOSE_NORMAL)
        state.log.info("closing the call: %s", why)
        await state.close(CLOSE_NORMAL, why)
        state.scope.cancel()


async def send(state: CallState, player: Player) -> None:
    """Release the player's frames to ACS on the playout clock, until ACS hangs up."""
    ws, stats, encode_audio = state.ws, state.stats, codec.encode_audio
    with state.sending:
        while True:
            stop, frames = await player.next_release()
            messages = [codec.STOP_AUDIO_MESSAGE] if stop else []
            messages += [encode_audio(pcm) for pcm in frames]
            try:
                await ws.send_messages(messages)
            except ConnectionClosed as closed:
                player.playout.not_sent(frames)
                if isinstance(closed, SendTimeout):
                    give_up(state, closed)
                return  # otherwise the receive task sees the same and ends the call
            stats.messages_out += len(messages)
            stats.stop_audio_sent += stop
            # not held while parked for the next release (~1 KB of text a frame, per call)
            del messages, frames


async def process(state: CallState, processor: Processor, call: Call) -> None:
    """Run the processor; its return ends the call (1000), its exception too (1011)."""
    state.log.debug("processor started")
    try:
        await processor(call)
    except Exception as exc:  # the processor's bug ends its own call, nothing else
        await processor_failed(state, exc)
        state.processor_returned = True
        return
    state.log.debug("processor returned")
    if state.end(EndReason.PROCESSOR, CLOSE_NORMAL):
        await state.close(CLOSE_NORMAL, "")
    state.processor_returned = True
    state.scope.cancel()


async def processor_failed(state: CallState, exc: Exception) -> None:
    """The processor raised (from its coroutine, or its inline audio handler in the receive
    task): its call ends with 1011, and nothing else is harmed."""
    state.log.error("processor failed: %r", exc, exc_info=exc)  # also outside its except
    if state.error is None:
        state.error = exc
    if state.end(EndReason.PROCESSOR_ERROR, CLOSE_INTERNAL_ERROR):
        await state.close(CLOSE_INTERNAL_ERROR, "processor error")
    state.scope.cancel()
