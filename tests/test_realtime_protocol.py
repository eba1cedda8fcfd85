"""The sans-IO Realtime protocol: both generations of event names, and session shapes."""

from __future__ import annotations

import orjson
import pytest

from gateway.processors.realtime import protocol
from gateway.processors.realtime.protocol import (
    AudioDelta,
    AudioDone,
    MalformedEvent,
    ResponseCreated,
    ResponseDone,
    SessionReady,
    SessionSettings,
    SpeechStarted,
    UpstreamError,
)


def event(**fields: object) -> str:
    return orjson.dumps(fields).decode()


@pytest.mark.parametrize("name", ["response.output_audio.delta", "response.audio.delta"])
def test_audio_delta_in_both_generations(name):
    parsed = protocol.parse(
        event(type=name, response_id="r1", item_id="i1", content_index=0, delta="AAAA")
    )
    assert parsed == AudioDelta("r1", "i1", 0, "AAAA")


@pytest.mark.parametrize("name", ["response.output_audio.done", "response.audio.done"])
def test_audio_done_in_both_generations(name):
    assert protocol.parse(event(type=name, response_id="r1", item_id="i1")) == AudioDone("r1", "i1")


def test_control_events():
    assert protocol.parse(
        event(type="input_audio_buffer.speech_started", audio_start_ms=1200, item_id="u1")
    ) == SpeechStarted(1200, "u1")
    assert protocol.parse(event(type="response.created", response={"id": "r9"})) == (
        ResponseCreated("r9")
    )
    assert protocol.parse(
        event(type="response.done", response={"id": "r9", "status": "cancelled"})
    ) == ResponseDone("r9", "cancelled")
    assert protocol.parse(event(type="session.updated", session={})) == SessionReady(True)
    error = protocol.parse(
        event(type="error", error={"type": "invalid_request_error", "code": "x", "message": "m"})
    )
    assert error == UpstreamError("invalid_request_error", "x", "m") and not error.fatal
    assert protocol.parse(event(type="error", error={"type": "server_error"})).fatal
    assert protocol.parse(event(type="rate_limits.updated")).type == "rate_limits.updated"


@pytest.mark.parametrize(
    "bad", ["not json", "[]", '{"no":"type"}', event(type="response.audio.delta", item_id="i")]
)
def test_malformed_events_are_refused(bad):
    with pytest.raises(MalformedEvent):
        protocol.parse(bad)


def test_session_update_ga_shape():
    settings = SessionSettings(
        instructions="Be brief.",
        voice="marin",
        transcription={"model": "gpt-4o-transcribe"},
        extra={"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
    )
    session = orjson.loads(protocol.session_update(settings, protocol.GA))["session"]
    assert session["type"] == "realtime"
    assert session["instructions"] == "Be brief."
    audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
    assert audio_in["format"] == audio_out["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["turn_detection"] == {"type": "server_vad"}
    assert audio_in["transcription"] == {"model": "gpt-4o-transcribe"}
    assert audio_in["noise_reduction"] == {"type": "near_field"}  # merged, not replacing
    assert audio_out["voice"] == "marin"


def test_session_update_beta_shape():
    settings = SessionSettings(
        voice="alloy",
        turn_detection={"type": "azure_semantic_vad"},
        transcription={"model": "whisper-1"},
    )
    session = orjson.loads(protocol.session_update(settings, protocol.BETA))["session"]
    assert "type" not in session
    assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
    assert session["voice"] == "alloy"
    assert session["turn_detection"] == {"type": "azure_semantic_vad"}
    assert session["input_audio_transcription"] == {"model": "whisper-1"}


def test_session_update_at_16khz_in_voice_lives_spelling():
    """Another rate than 24 kHz: Voice Live's `input_audio_sampling_rate`, and its output
    format's name for the rate; at 24 kHz neither is written (the default)."""
    settings = SessionSettings()
    session = orjson.loads(protocol.session_update(settings, protocol.BETA, 16000))["session"]
    assert session["input_audio_format"] == "pcm16"
    assert session["input_audio_sampling_rate"] == 16000
    assert session["output_audio_format"] == "pcm16_16000hz"
    default = orjson.loads(protocol.session_update(settings, protocol.BETA, 24000))["session"]
    assert "input_audio_sampling_rate" not in default
    assert default["output_audio_format"] == "pcm16"


def test_audio_bytes_counts_without_decoding():
    import base64

    for n in range(0, 12):
        assert protocol.audio_bytes(base64.b64encode(bytes(n)).decode()) == n
