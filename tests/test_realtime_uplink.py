"""The bridged path's per-frame pieces: the caller -> model batches (`uplink`), and the audio
delta parse that cuts the base64 out before JSON parsing (`protocol.parse`)."""

from __future__ import annotations

import binascii

import numpy as np
import orjson
import pybase64
import pytest

from gateway.acs.packets import AudioData
from gateway.audio.resample import StreamResampler
from gateway.processors.realtime import protocol
from gateway.processors.realtime.uplink import Uplink
from gateway.testing import speech


def packet(pcm: bytes) -> AudioData:
    return AudioData(pcm, pybase64.b64encode_as_string(pcm), None, None, False)


def appended(event: str | None) -> bytes:
    assert event is not None
    parsed = orjson.loads(event)
    assert parsed["type"] == "input_audio_buffer.append"
    return pybase64.b64decode(parsed["audio"], validate=True)


def test_24khz_frames_are_joined_as_base64_two_at_a_time():
    uplink = Uplink(24000)
    frames = [bytes([i]) * 960 for i in range(5)]
    events = [uplink.add(packet(f)) for f in frames]
    assert events[0] is None and events[2] is None and events[4] is None
    assert appended(events[1]) == frames[0] + frames[1] and uplink.frames == 2
    assert appended(events[3]) == frames[2] + frames[3]
    assert appended(uplink.flush()) == frames[4] and uplink.frames == 1
    assert uplink.flush() is None and uplink.frames == 0


def test_padded_base64_is_joined_as_pcm_so_batches_stay_whole():
    """Base64 that ends with padding cannot be joined as base64: a 16 kHz frame's (640 bytes)
    at a model that takes 16 kHz, or an odd frame's. Its PCM is joined instead, in order with
    what was held, and the batch holds as many frames as ever."""
    uplink = Uplink(16000, model_rate=16000)
    frames = [bytes([i + 1]) * 640 for i in range(5)]
    events = [uplink.add(packet(f)) for f in frames]
    assert [e is None for e in events] == [True, False, True, False, True]
    assert appended(events[1]) == frames[0] + frames[1] and uplink.frames == 2
    assert appended(events[3]) == frames[2] + frames[3]
    assert appended(uplink.flush()) == frames[4] and uplink.frames == 1
    uplink = Uplink(24000)
    whole, odd = bytes([7]) * 960, b"\x01\x02" * 250  # 500 bytes: padded base64
    assert uplink.add(packet(whole)) is None
    assert appended(uplink.add(packet(odd))) == whole + odd and uplink.frames == 2
    assert uplink.add(packet(bytes([9]) * 960)) is None  # the next batch, as before
    assert appended(uplink.flush()) == bytes([9]) * 960


def test_16khz_batches_are_resampled_as_one_stream():
    uplink = Uplink(16000)
    pcm = bytes(range(256)) * 25  # 6400 bytes: 10 frames of 640
    events = [uplink.add(packet(pcm[i : i + 640])) for i in range(0, len(pcm), 640)]
    assert [e is None for e in events] == [True, False] * 5  # one event per two frames
    out = b"".join(appended(e) for e in events if e is not None)
    whole = StreamResampler(16000, 24000).process(pcm)
    # the same stream (chunk sizes move soxr's rounding by a least significant bit at most)
    n = min(len(out), len(whole))
    assert n > 0.8 * len(pcm) * 3 / 2
    got, want = np.frombuffer(out[:n], np.int16), np.frombuffer(whole[:n], np.int16)
    assert int(np.max(np.abs(got.astype(np.int32) - want))) <= 2


def test_a_silent_caller_costs_one_shared_event_and_keeps_time():
    """Once the resampler has settled, each 40 ms of digital silence is the same 40 ms of
    24 kHz zeros, as one event object built once; the words after it are resampled as ever."""
    uplink, other = Uplink(16000), Uplink(16000)
    words = speech(16000)[: 16000 * 2]
    sent = [uplink.add(packet(words[i : i + 640])) for i in range(0, len(words), 640)]
    quiet = [uplink.add(packet(bytes(640))) for _ in range(50)]  # a second of silence
    settled = [e for e in quiet[20:] if e is not None]  # past SETTLED_MS
    assert len(settled) == 15 and all(appended(e) == bytes(1920) for e in settled)
    assert all(e is settled[0] for e in settled)
    other.add(packet(bytes(640)))  # another call, silent from the start: the same object
    assert other.add(packet(bytes(640))) is settled[0]
    after = [uplink.add(packet(words[i : i + 640])) for i in range(0, 6400, 640)]
    out = b"".join(appended(e) for e in sent + quiet + after if e is not None)
    out += uplink.to_model.flush()  # what the filter still holds, to compare whole streams
    whole = StreamResampler(16000, 24000)
    expected = whole.process(words + bytes(640 * 50) + words[:6400]) + whole.flush()
    assert len(out) == len(expected)  # nothing lost or added: the words after keep their time
    got, want = np.frombuffer(out, np.int16), np.frombuffer(expected, np.int16)
    assert int(np.max(np.abs(got.astype(np.int32) - want))) <= 2


def delta_event(audio: str, **fields: object) -> dict[str, object]:
    return {
        "type": "response.output_audio.delta",
        "event_id": "e1",
        "response_id": "r1",
        "item_id": "i1",
        "output_index": 0,
        "content_index": 1,
        **fields,
        "delta": audio,
    }


@pytest.mark.parametrize(
    "event",
    [
        delta_event("AAECAw=="),  # the delta last, as OpenAI sends it
        {"delta": "AAECAw==", **{k: v for k, v in delta_event("").items() if k != "delta"}},
        delta_event("AAECAw==", extra={"delta": "nested"}),  # another "delta" in the event
    ],
)
def test_audio_deltas_parse_the_same_whatever_the_member_order(event):
    expected = protocol.AudioDelta("r1", "i1", 1, "AAECAw==")
    message = orjson.dumps(event)
    assert protocol.parse(message) == expected
    assert protocol.parse(message.decode()) == expected  # the plain path agrees


def test_escaped_or_text_deltas_are_parsed_whole():
    escaped = b'{"type":"response.output_audio.delta","item_id":"i","delta":"AA\\/A"}'
    assert protocol.parse(escaped) == protocol.AudioDelta(None, "i", 0, "AA/A")
    text = orjson.dumps({"type": "response.output_audio_transcript.delta", "delta": 'a "b"'})
    assert protocol.parse(text) == protocol.OtherEvent("response.output_audio_transcript.delta")
    with pytest.raises(protocol.MalformedEvent):
        protocol.parse(b'{"type":"response.output_audio.delta","delta":"AAAA"}')  # no item


@pytest.mark.parametrize(
    "message", [b"", b'"', b'"delta":"', b'{"type":"x","delta":"', b'{"delta":"abc"', b'""']
)
def test_broken_messages_are_malformed_not_crashes(message):
    with pytest.raises(protocol.MalformedEvent):
        protocol.parse(message)


def test_decode_audio_validates_fast_and_falls_back_leniently():
    assert protocol.decode_audio("AAECAw==") == b"\x00\x01\x02\x03"
    assert protocol.decode_audio("AAEC\nAw==") == b"\x00\x01\x02\x03"  # skipped, as before
    assert protocol.decode_audio("AAEC\u00e9Aw==") == b"\x00\x01\x02\x03"  # not ASCII: skipped
    with pytest.raises(binascii.Error):  # not base64 at all: the downlink counts and skips it
        protocol.decode_audio("AAE")
