"""`interruption = "pause"` end to end (simulated ACS, the gateway, the fake model; autojump
clock): a noise burst during a reply pauses it and the reply resumes with nothing repeated and
nothing missing; a real interruption is confirmed and truncated to what the caller heard."""

from __future__ import annotations

import random

import pytest

from gateway.processors import Call
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech
from gateway.testing.fake_model import FakeModel
from gateway.testing.peer import AcsPlayback
from tests.test_realtime_e2e import KEY_ENV, conversation, options, silence, spied

BYTES_PER_MS = 32  # 16 kHz PCM16


def noise(ms: int) -> bytes:
    """A burst of loud white noise (a cough, a door): the model's VAD hears it as speech."""
    rng = random.Random(ms)
    n = 16 * ms
    return b"".join(rng.randint(-8000, 8000).to_bytes(2, "little", signed=True) for _ in range(n))


def caller_with_burst(burst: bytes) -> bytes:
    """The question (2 s), 1.5 s of the bot's reply, `burst`, then quiet while it finishes."""
    gap = silence(16000, 0.15) if not burst else b""
    return speech(16000)[: 16000 * 2 * 2] + silence(16000, 1.5) + burst + gap + silence(16000, 9)


async def run_call(
    monkeypatch: pytest.MonkeyPatch, caller: bytes, speech_start_ms: int = 60, **opts: object
) -> tuple[AcsPlayback, list[float], Call, FakeModel]:
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model([speech(24000)], speech_start_ms=speech_start_ms) as model:
        o = options(model.url, **{"transcription": {"model": "whisper-1"}, **opts})
        async with open_gateway(spied(o, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(caller)
    return acs.playback, acs.stop_times, calls[0], model


def gaps(playback: AcsPlayback, longer_than: float) -> list[tuple[float, float]]:
    """(from, to) of each silence between pieces of the bot's audio the caller heard."""
    out = []
    segments = playback.segments
    for a, b in zip(segments, segments[1:], strict=False):
        end = a.start + len(a.pcm) / playback.bytes_per_second
        if b.start - end > longer_than:
            out.append((end, b.start))
    return out


async def test_a_noise_burst_pauses_the_reply_and_it_resumes_where_it_paused(
    autojump_clock, monkeypatch
):
    baseline, _, _, _ = await run_call(monkeypatch, caller_with_burst(b""), interruption="pause")
    playback, stops, call, model = await run_call(
        monkeypatch, caller_with_burst(noise(150)), interruption="pause"
    )
    starts = model.sent_of("input_audio_buffer.speech_started")
    assert len(starts) == 2  # the question, then the burst
    [stop_at] = stops
    assert 0 <= stop_at - starts[1].time <= 0.020  # paused at once
    # the caller heard the whole reply, nothing repeated, nothing missing ...
    assert playback.heard() == baseline.heard()
    assert len(baseline.heard()) > 7 * 16000 * 2
    # ... with one pause in it, from the stop until the blank transcript of the burst came
    [(paused, resumed)] = gaps(playback, 0.1)
    assert paused == pytest.approx(stop_at, abs=1e-6)
    question, transcribed = model.sent_of("conversation.item.input_audio_transcription.completed")
    assert question.event["transcript"] != "" and transcribed.event["transcript"] == ""
    assert transcribed.event["item_id"] == starts[1].event["item_id"]
    assert 0 <= resumed - transcribed.time <= 0.020
    assert resumed - paused < 1.5  # before the confirmation deadline
    # the model was not asked again: no cancel, no truncate, no response to the noise (the
    # gateway asked for one at the end of the question only), and the noise's item is gone
    assert model.received("response.cancel") == []
    assert model.received("conversation.item.truncate") == []
    assert len(model.received("response.create")) == 1
    [delete] = model.received("conversation.item.delete")
    assert delete["item_id"] == starts[1].event["item_id"]
    assert call.stats.false_interruptions == 1 and call.stats.barge_ins == 0
    assert call.player is not None
    stats = call.player.playout.stats
    assert stats.dropped_by_stop == 0 and stats.pauses == 1 and 0 < stats.recalled <= 60 * 32
    # the session asked the model not to cancel the reply on its own
    [update] = model.received("session.update")
    vad = update["session"]["audio"]["input"]["turn_detection"]
    assert vad["interrupt_response"] is False and vad["create_response"] is False


async def test_a_confirmed_interruption_truncates_to_what_the_caller_heard(
    autojump_clock, monkeypatch
):
    playback, stops, call, model = await run_call(
        monkeypatch, conversation(16000), interruption="pause"
    )
    starts = model.sent_of("input_audio_buffer.speech_started")
    [stop_at] = stops  # one stop-audio: the pause's; the confirmation adds none
    assert 0 <= stop_at - starts[1].time <= 0.020
    [truncate] = model.received("conversation.item.truncate")
    heard_ms = len(playback.heard()) / BYTES_PER_MS
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 1  # what the caller heard, to the ms
    assert playback.dropped_bytes > 0  # ACS's unplayed buffer was dropped (and kept, then cut)
    assert [r for r in gaps(playback, 0.1)] == []  # no resume: nothing played after the stop
    assert all(s.start < stop_at for s in playback.segments)
    assert call.stats.barge_ins == 1 and call.stats.false_interruptions == 0
    # the gateway asked for a response to the question, then to the interruption
    creates = [r for r in model.events if r.type == "response.create"]
    assert len(creates) == 2
    # confirmed by the length of the speech (the model's speech_stopped), within the deadline
    confirm_at = next(r.time for r in model.events if r.type == "conversation.item.truncate")
    stopped = model.sent_of("input_audio_buffer.speech_stopped")[1]
    assert stopped.event["audio_end_ms"] - starts[1].event["audio_start_ms"] >= 500
    assert 0 <= confirm_at - stopped.time <= 0.020
    assert confirm_at - stop_at <= 1.5
    assert 0 <= creates[1].time - confirm_at <= 0.020


async def test_cancel_mode_is_the_default_and_cancels_on_a_noise_burst(autojump_clock, monkeypatch):
    playback, stops, call, model = await run_call(monkeypatch, caller_with_burst(noise(150)))
    [truncate] = model.received("conversation.item.truncate")
    assert call.stats.barge_ins == 1 and call.stats.false_interruptions == 0
    assert len(stops) == 1 and gaps(playback, 0.1) == []
    [update] = model.received("session.update")
    assert "interrupt_response" not in update["session"]["audio"]["input"]["turn_detection"]
    assert truncate["audio_end_ms"] > 0


async def test_without_transcription_a_short_sound_resumes_when_the_model_hears_it_end(
    autojump_clock, monkeypatch
):
    playback, stops, call, model = await run_call(
        monkeypatch, caller_with_burst(noise(150)), interruption="pause", transcription=None
    )
    [(paused, resumed)] = gaps(playback, 0.1)
    stopped = model.sent_of("input_audio_buffer.speech_stopped")[1]
    assert 0 <= resumed - stopped.time <= 0.020
    assert call.stats.false_interruptions == 1 and call.stats.barge_ins == 0


async def test_a_sound_still_going_at_the_deadline_is_confirmed(autojump_clock, monkeypatch):
    """A long sound the model never hears end (its silence window is longer than the
    deadline): confirmed when `interruption_confirm_ms` runs out."""
    playback, stops, call, model = await run_call(
        monkeypatch,
        caller_with_burst(noise(150)),
        interruption="pause",
        interruption_confirm_ms=300,
    )
    [stop_at] = stops
    confirm_at = next(r.time for r in model.events if r.type == "conversation.item.truncate")
    assert confirm_at - stop_at == pytest.approx(0.300, abs=0.020)
    assert call.stats.barge_ins == 1 and gaps(playback, 0.1) == []


async def test_a_local_vad_false_alarm_resumes_at_the_deadline(autojump_clock, monkeypatch):
    """The local VAD hears 160 ms of voice; the model (whose VAD wants 200 ms) hears nothing:
    the pause ends when the deadline finds the caller quiet."""
    burst = speech(16000)[16000 * 2 // 2 : 16000 * 2 // 2 + 160 * BYTES_PER_MS]
    baseline, _, _, _ = await run_call(
        monkeypatch, caller_with_burst(b""), speech_start_ms=200, interruption="pause"
    )
    playback, stops, call, model = await run_call(
        monkeypatch,
        caller_with_burst(burst),
        speech_start_ms=200,
        interruption="pause",
        local_vad=True,
    )
    assert len(model.sent_of("input_audio_buffer.speech_started")) == 1
    [stop_at] = stops
    [(paused, resumed)] = gaps(playback, 0.1)
    assert paused == pytest.approx(stop_at, abs=1e-6)
    assert resumed - paused == pytest.approx(1.5, abs=0.025)
    assert playback.heard() == baseline.heard()
    assert call.stats.false_interruptions == 1 and call.stats.barge_ins == 0
