"""The local VAD: one start per utterance in real speech, none in silence."""

from __future__ import annotations

import pytest

from gateway.audio.vad import WebRtcVad
from gateway.testing import frames, speech


@pytest.mark.parametrize("rate", [16000, 24000])
def test_speech_starts_are_found_in_real_speech(rate):
    vad = WebRtcVad(rate)
    pcm = bytes(rate * 2 // 2) + speech(rate)  # 0.5 s of silence first
    starts = [i * 20 for i, f in enumerate(frames(pcm, rate)) if vad.feed(f)]
    assert starts and 500 <= starts[0] <= 700
    assert len(starts) <= 5  # utterances, not words


def test_silence_is_not_speech():
    vad = WebRtcVad(16000)
    assert not any(vad.feed(bytes(640)) for _ in range(100))


def test_bad_aggressiveness_is_refused():
    with pytest.raises(ValueError):
        WebRtcVad(16000, aggressiveness=4)


def test_an_utterance_ends_after_the_silence_that_follows_it():
    vad = WebRtcVad(16000, min_silence_ms=300)
    said = speech(16000)[: 16000 * 2]  # a second of speech, then 0.6 s of silence
    events = [(vad.feed(f), vad.ended) for f in frames(said + bytes(16000 * 2 * 6 // 10), 16000)]
    starts = [i for i, (started, _) in enumerate(events) if started]
    ends = [i for i, (_, ended) in enumerate(events) if ended]
    assert starts and ends and ends[-1] > starts[-1]
    assert len(ends) <= len(starts)  # one end per utterance, never an end without its start
    assert 50 + 15 <= ends[-1] <= 50 + 20  # 300 ms after the speech stopped (frame 50)
    assert not any(vad.feed(bytes(640)) or vad.ended for _ in range(50))  # silence goes on
