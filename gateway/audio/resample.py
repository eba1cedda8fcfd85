"""A stateful streaming resampler for PCM16 mono (soxr underneath).

Owns: converting one continuous stream of audio between two sample rates. Never: chunk-by-chunk
conversion without state (every chunk edge would click), I/O, or clocks.

soxr keeps the filter's history between calls, so the output is the same as resampling the whole
stream at once; it holds back a few milliseconds (the filter delay) until more input comes or the
stream is flushed. The output is time-aligned with the input: millisecond t of the output is
millisecond t of the input, which is what lets the realtime bridge count what the caller heard
in the model's own milliseconds.

Digital silence costs nothing once the filter has settled. A call to soxr costs 40-60 us in a
live gateway (its state is cold after the core idled between frames; 10-20 us in a tight loop),
a soxr stream that has carried sound holds about 90 KB, and a caller is silent for much of a
call: all of it while the bot speaks. So once `SETTLED_MS` of all-zero input has gone through
soxr, the stream is dropped: all it held back is silence, which is owed. Further all-zero chunks
come out as the zeros soxr would have made, of the same length. The next sound opens a fresh
stream fed the owed silence first, so the sound's onset (the filter reaches back into the
silence before it) comes out where and as the one stream would have made it. The output stays
aligned to the sample, and differs only in soxr's dither (+-1 LSB) during the silence, which
becomes exact zeros. A stream is dropped only where its output is a whole number of samples
(chunks of whole milliseconds always are), so no fraction of a sample is lost.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Final, Protocol

from ..acs.packets import BYTES_PER_SAMPLE

if TYPE_CHECKING:  # numpy is imported only when resampling is used (the `realtime` extra)
    import numpy as np
    from numpy.typing import NDArray

# soxr "high quality": holds back 6-37 ms (21 on average) of a stream fed 20-40 ms at a time,
# 5-7 us per 20 ms in a tight loop (bench/resample_cost.py)
QUALITY: Final = "HQ"
# All-zero input soxr must have seen before more of it may skip soxr: its filter reaches back
# ~37 ms and it holds back up to a 30 ms output block; after 40 ms of zeros everything it holds
# is exactly zero (tests/test_resample.py checks the whole output against soxr's own).
SETTLED_MS: Final = 200


def silence(n_bytes: int) -> bytes:
    """`n_bytes` of digital silence: for a frame's or a batch's size, one object shared by
    every call (they come in few sizes); a larger one (a model's delta) is made anew."""
    return _shared_silence(n_bytes) if n_bytes <= _SHARED_SILENCE_MAX else bytes(n_bytes)


_SHARED_SILENCE_MAX: Final = 8192  # bytes: 100 ms at 24 kHz is 4800


@functools.lru_cache(maxsize=16)
def _shared_silence(n_bytes: int) -> bytes:
    return bytes(n_bytes)


class _SoxrStream(Protocol):
    """The part of `soxr.ResampleStream` used here (soxr ships no type information)."""

    def resample_chunk(self, x: NDArray[np.int16], last: bool = False) -> NDArray[np.int16]: ...


class StreamResampler:
    """Resample one continuous PCM16 mono stream from `src_rate` to `dst_rate`.

    `process(pcm)` returns what is ready (possibly b""); `flush()` returns the held-back tail and
    starts a new stream; `reset()` forgets everything held back (barge-in: stale audio).
    With equal rates it is the identity and costs nothing. Between `flush()` or `reset()` and
    the next `process()`, and through settled silence, it holds no soxr state at all.
    """

    __slots__ = (
        "src_rate",
        "dst_rate",
        "_identity",
        "_stream",
        "_quiet",
        "_settled",
        "_fed",
        "_got",
        "_owed",
        "_unit_in",
        "_unit_out",
    )

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._identity = src_rate == dst_rate
        # Opened at the first sound, dropped at flush, reset or settled silence: a soxr stream
        # that has carried sound holds about 90 KB.
        self._stream: _SoxrStream | None = None
        # Samples of all-zero input since the last sound (a stream not yet opened has heard
        # only silence); from `_settled` on, all-zero chunks skip soxr.
        self._settled = SETTLED_MS * src_rate // 1000
        self._quiet = self._settled
        self._fed = self._got = 0  # samples into and out of the open stream
        self._owed = 0  # output samples of silence a dropped stream held back
        # the fewest input samples that make whole output samples, and those output samples
        gcd = math.gcd(src_rate, dst_rate)
        self._unit_in, self._unit_out = src_rate // gcd, dst_rate // gcd

    def _open(self) -> tuple[_SoxrStream, bytes]:
        """A fresh stream, and its output for the owed silence (fed to it first)."""
        import numpy as np
        import soxr  # optional: the `realtime` extra

        stream: _SoxrStream = soxr.ResampleStream(
            self.src_rate, self.dst_rate, 1, dtype="int16", quality=QUALITY
        )
        self._stream = stream
        owed, self._owed = self._owed, 0
        self._fed = owed // self._unit_out * self._unit_in  # `_drop` left whole units owed
        primed = stream.resample_chunk(np.zeros(self._fed, dtype=np.int16)) if owed else None
        self._got = 0 if primed is None else len(primed)
        return stream, b"" if primed is None else primed.tobytes()

    def _drop(self) -> int:
        """Drop the stream of settled silence: what it held back is owed, in whole units
        (returned: the output samples of silence beyond them, due now)."""
        held = self._fed * self.dst_rate // self.src_rate - self._got
        self._stream = None
        due = held % self._unit_out
        self._owed = held - due
        return due

    def process(self, pcm: bytes) -> bytes:
        if self._identity:
            return pcm
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM16 must be whole samples; got {len(pcm)} bytes")
        samples = len(pcm) // BYTES_PER_SAMPLE
        if pcm == silence(len(pcm)):  # compared in C; stops at the first non-zero byte
            out_samples, fraction = divmod(samples * self.dst_rate, self.src_rate)
            settled = self._quiet >= self._settled
            self._quiet += samples
            if settled and not fraction:  # a fraction: soxr carries it; let it
                if self._stream is not None and not self._fed * self.dst_rate % self.src_rate:
                    out_samples += self._drop()
                return silence(out_samples * BYTES_PER_SAMPLE)
        else:
            self._quiet = 0
        import numpy as np

        stream = self._stream
        primed = b""
        if stream is None:
            stream, primed = self._open()
        out = stream.resample_chunk(np.frombuffer(pcm, dtype=np.int16))
        self._fed += samples
        self._got += len(out)
        return primed + out.tobytes() if primed else out.tobytes()

    def flush(self) -> bytes:
        """End of the stream: everything still held back; the next `process` starts afresh."""
        stream, self._stream = self._stream, None
        self._quiet = self._settled
        owed, self._owed = self._owed, 0
        if stream is None:
            return silence(owed * BYTES_PER_SAMPLE)
        import numpy as np

        return stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True).tobytes()

    def reset(self) -> None:
        """Forget what is held back (it is stale: the caller interrupted)."""
        self._stream = None
        self._quiet = self._settled
        self._owed = 0
