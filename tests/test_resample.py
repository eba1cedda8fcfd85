"""The streaming resampler: stateful, so chunked output equals whole-signal output (no clicks)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from gateway.audio.resample import StreamResampler
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
