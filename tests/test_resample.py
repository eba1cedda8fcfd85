"""The streaming resampler: stateful, so chunked output equals whole-signal output (no clicks)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from gateway.audio.resample import SETTLED_MS, StreamResampler
from gateway.testing import speech


def chunked(resampler: StreamResampler, pcm: bytes, size: int) -> bytes:
    out = b"".join(resampler.process(pcm[i : i + size]) for i in range(0, len(pcm), size))
    return out + resampler.flush()


@pytest.mark.parametrize("src, dst, size", [(16000, 24000, 640), (24000, 16000, 4800 + 2)])
def test_streaming_equals_resampling_the_whole_signal(src, dst, size):
    pcm = speech(src)[: src * 2 * 2]
    out = np.frombuffer(chunked(StreamResampler(src, dst), pcm, size), dtype=np.int16)
    whole = soxr.resample(np.frombuffer(pcm, dtype=np.int16), src, dst, quality="HQ")
    assert len(out) == len(whole) == len(pcm) // 2 * dst // src
    assert np.max(np.abs(out.astype(np.int32) - whole.astype(np.int32))) <= 2  # rounding


def test_chunk_by_chunk_without_state_would_click():
    """Why state matters: resampling each 20 ms frame on its own leaves steps at the edges."""
    pcm = speech(16000)[16000 : 16000 + 16000 * 2]
    frames = [np.frombuffer(pcm[i : i + 640], dtype=np.int16) for i in range(0, len(pcm), 640)]
    stateless = np.concatenate([soxr.resample(f, 16000, 24000) for f in frames])
    stateful = np.frombuffer(chunked(StreamResampler(16000, 24000), pcm, 640), dtype=np.int16)
    whole = soxr.resample(np.frombuffer(pcm, dtype=np.int16), 16000, 24000, quality="HQ")
    error = lambda x: np.max(np.abs(x.astype(np.int32) - whole.astype(np.int32)))  # noqa: E731
    assert error(stateful) <= 2 < 100 < error(stateless)


def test_equal_rates_are_the_identity():
    resampler = StreamResampler(24000, 24000)
    pcm = speech(24000)[:9600]
    assert resampler.process(pcm) is pcm
    assert resampler.flush() == b""


def test_reset_forgets_held_back_audio():
    loud = np.full(480, 10000, dtype=np.int16).tobytes()

    def after(reset: bool) -> int:
        resampler = StreamResampler(24000, 16000)
        assert resampler.process(loud) == b""  # held back: the filter's delay
        if reset:
            resampler.reset()
        out = resampler.process(bytes(960 * 4)) + resampler.flush()
        return int(np.max(np.abs(np.frombuffer(out, dtype=np.int16))))

    assert after(reset=False) > 5000
    assert after(reset=True) <= 2  # nothing of the stale audio comes out (rounding noise)


def test_odd_length_is_refused():
    with pytest.raises(ValueError):
        StreamResampler(16000, 24000).process(b"\x00\x01\x02")


def talk_with_pauses(rate: int) -> bytes:
    """Speech, a pause of digital silence long enough to settle, speech, a short pause, speech."""
    words = speech(rate)
    second = rate * 2  # bytes per second
    return (
        words[:second]
        + bytes(second * 3 // 2)
        + words[second : second * 2]
        + bytes(second // 10)  # shorter than SETTLED_MS: soxr sees all of it
        + words[second * 2 : second * 3]
        + bytes(second)
    )


@pytest.mark.parametrize(
    "src, dst, size",
    [(16000, 24000, 640), (16000, 24000, 1280), (24000, 16000, 1920), (24000, 16000, 4800 + 2)],
)
def test_silence_that_skips_soxr_leaves_the_stream_as_soxr_makes_it(src, dst, size):
    """Skipping soxr for settled silence keeps every sample where soxr would put it (the words
    after a pause come out at the same instant, as the same samples) and the length exact."""
    pcm = talk_with_pauses(src)
    out = np.frombuffer(chunked(StreamResampler(src, dst), pcm, size), dtype=np.int16)
    whole = soxr.resample(np.frombuffer(pcm, dtype=np.int16), src, dst, quality="HQ")
    assert len(out) == len(whole) == len(pcm) // 2 * dst // src
    assert np.max(np.abs(out.astype(np.int32) - whole.astype(np.int32))) <= 2  # rounding, dither


class NoSoxr:
    def resample_chunk(self, x: object, last: bool = False) -> object:
        raise AssertionError("soxr was called")


def test_settled_silence_drops_soxr_and_is_exact_zeros(monkeypatch):
    resampler = StreamResampler(16000, 24000)
    resampler.process(speech(16000)[:6400])
    settling = [resampler.process(bytes(640)) for _ in range(SETTLED_MS // 20)]  # soxr sees these
    assert any(any(chunk) for chunk in settling)  # the words' tail came out of the filter
    resampler._stream = NoSoxr()  # type: ignore[assignment]
    out = resampler.process(bytes(640))  # settled: the stream is dropped, unasked
    assert resampler._stream is None  # its state (about 90 KB) goes with it
    assert out == bytes(len(out)) and len(out) >= 960  # this frame, and maybe a held sample
    for _ in range(50):  # a second of silence, frame by frame
        assert resampler.process(bytes(640)) == bytes(960)
    assert resampler.process(speech(16000)[6400:7040]) != bytes(960)  # a fresh stream
    assert resampler._stream is not None


def test_silence_before_any_sound_never_opens_soxr():
    resampler = StreamResampler(16000, 24000)
    assert resampler.process(bytes(640)) == bytes(960)
    assert resampler._stream is None  # no 50 KB stream for a caller who has not spoken yet
