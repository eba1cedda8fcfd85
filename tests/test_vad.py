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
