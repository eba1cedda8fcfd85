"""One call of simulate's control mode, from the ring to its end, through the fake ACS.

Owns: what each step waits for (the answer, the media WebSocket or MediaStreamingFailed, the
echo, the end asked for) and what it measured, into the call's `ControlCall`: its latencies,
its end, its media as a `CallResult` (echo by frame position, round trips, forms) and how late
the caller's frames left. Never: raises a call's fault (it fails the record) or leaves the call
up: the caller hangs up in the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio
import trio_websocket

from ..acs import client
from ..acs.packets import FRAME_MS
from ..testing.fake_acs import FakeAcs, FakeCall
from ..testing.peer import SimulatedCall, WaitFailed
from . import control_bot
from .control import ControlCall, ControlOptions
from .results import CallResult

ECHO_WAIT = 2.0  # seconds an echo may lag behind the end of the caller's speech


async def call_through(
    acs: FakeAcs, options: ControlOptions, record: ControlCall, speech: Mapping[int, bytes]
) -> None:
    """One whole call; a fault ends it (`ControlCall.fail`) and is never raised. The caller
    speaks `speech[rate]`, at the rate the gateway's answer asked ACS for."""
    call = await acs.ring(caller=f"+1425555{record.index % 10000:04d}")
    record.result.connection_id = call.call_connection_id
    try:
        await _follow(acs, options, record, call, speech)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(options.timeout):
            await acs.hang_up(call)  # a no-op for a call already over


async def _follow(
    acs: FakeAcs,
    options: ControlOptions,
    record: ControlCall,
    call: FakeCall,
    speech: Mapping[int, bytes],
) -> None:
    delivery = call.delivery
    if delivery is None or delivery.status != 200:
        status = "unreachable" if delivery is None or delivery.status is None else delivery.status
        record.fail(f"eventgrid_{status}")
        return
    with trio.move_on_after(options.timeout):
        await call.answered.wait()
    if call.answered_at is None or call.rung_at is None:
        record.fail("not_answered")
        return
    record.answer_s = call.answered_at - call.rung_at
    with trio.move_on_after(options.timeout):
        await _media_or_failure(call)
    if not call.media_connected.is_set():
        failed = "MediaStreamingFailed" in call.callback_kinds()
        record.fail("streaming_failed" if failed else "media_timeout")
        return
    assert call.media is not None and call.media_connected_at is not None
    record.media_s = call.media_connected_at - call.answered_at
    record.result.connected = True
    media = call.media
    pcm = speech[media.sample_rate]
    began, first = trio.current_time(), len(media.transcript)
    try:
        await media.stream(pcm)
        if options.expect != "bot":
            with trio.move_on_after(ECHO_WAIT):
                await media.wait_for(lambda m: len(m.received_pcm) >= len(pcm))
        record.lateness = _account(record.result, pcm, media, first)
        times = media.audio_times
        if times:
            record.result.first_audio_ms = round((times[0] - began) * 1000, 2)
        await _end(acs, options, record, call)
        with trio.move_on_after(options.timeout):
            await media.closed.wait()
        record.result.close_code = media.close_code or 1000  # ACS closes without waiting
        record.result.closed_at = round(trio.current_time() - began, 3)
    except (WaitFailed, trio_websocket.ConnectionClosed):
        record.fail("media_lost")


async def _media_or_failure(call: FakeCall) -> None:
    """Until the media WebSocket opens, or ACS posts MediaStreamingFailed."""
    async with trio.open_nursery() as race:

        async def failed() -> None:
            await call.wait_for_callback("MediaStreamingFailed")
            race.cancel_scope.cancel()

        async def connected() -> None:
            await call.media_connected.wait()
            race.cancel_scope.cancel()

        race.start_soon(failed)
        race.start_soon(connected)


def _account(result: CallResult, sent: bytes, media: SimulatedCall, first: int) -> list[float]:
    """Echo accounting by frame position (what came back equal, what came back different),
    each echoed frame's round trip when the gateway sends one message a frame (an echo does),
    and the gateway's messages by form. `first`: the transcript's length before the speech.
    Returns how late each frame left against its 20 ms deadline (the simulator's health)."""
    frame = media.frame_bytes
    result.frames_sent = len(sent) // frame
    result.echo_expected = result.frames_sent
    sent_at = [t for t, way, _ in media.transcript[first:] if way == "sent"]
    audio = [r for r in media.received if r.kind == "audioData"]
    received = b"".join(r.pcm for r in audio)
    result.frames_received = len(audio)
    result.audio_ms_received = len(received) / (frame * 50) * 1000
    timed = all(len(r.pcm) == frame for r in audio)
    for k in range(min(len(sent), len(received)) // frame):
        if sent[k * frame : (k + 1) * frame] == received[k * frame : (k + 1) * frame]:
            result.echoed += 1
            if timed and k < len(sent_at):
                result.rtt.add(audio[k].time - sent_at[k])
        else:
            result.mismatched += 1
    for message in media.received:
        form = client.classify_form(message.raw)[2]
        result.forms[form] = result.forms.get(form, 0) + 1
    return [t - (sent_at[0] + k * FRAME_MS / 1000) for k, t in enumerate(sent_at)]


async def _end(acs: FakeAcs, options: ControlOptions, record: ControlCall, call: FakeCall) -> None:
    assert call.media is not None
    if record.wanted == "caller":
        await acs.hang_up(call)
    else:
        await call.media.send_dtmf(
            control_bot.HANG_UP if record.wanted == "bot" else control_bot.TRANSFER
        )
    with trio.move_on_after(options.timeout):
        await call.disconnected.wait()
    if not call.disconnected.is_set():
        record.fail(f"no_{record.wanted}_end")
        return
    record.ended = (
        "transfer" if call.transfers else ("caller" if record.wanted == "caller" else "bot")
    )
    if record.ended != record.wanted:
        record.fail(f"no_{record.wanted}_end")
        return
    record.result.ended("bot_hung_up" if record.ended == "bot" else "completed")
