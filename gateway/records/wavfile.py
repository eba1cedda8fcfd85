"""`WavFile`: a WAV file written as a call goes, readable up to its last update if the process
dies. Runs in the disk thread (`gateway.records.disk`), never on the event loop.

Owns: the 44-byte PCM16 header and where each chunk goes. Every chunk is written at its own
offset (`os.pwrite`), then the header's two sizes are rewritten to cover the end of the data:
so a chunk that was dropped (the writer fell behind) leaves silence, not a shift, and a file cut
short at any moment is a valid WAV of what was written before. Never: buffers, or raises for a
write that fails (`failed` says so; the recording ends, the call goes on).
"""

from __future__ import annotations

import os
import struct
from typing import Final

HEADER_BYTES: Final = 44
SAMPLE_BYTES: Final = 2  # PCM16
_pwrite = os.pwrite  # the one write call: tests replace it to inject a failing disk


def header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    block = channels * SAMPLE_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        8 * SAMPLE_BYTES,
        b"data",
        data_bytes,
    )


class WavFile:
    """An open PCM16 WAV file; `write(frame_index, interleaved)` places samples by time."""

    def __init__(self, path: str, channels: int, sample_rate: int) -> None:
        self.path = path
        self.channels = channels
        self.sample_rate = sample_rate
        self.block = channels * SAMPLE_BYTES
        self.data_bytes = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd: int | None = os.open(path, flags, 0o640)
        _pwrite(self.fd, header(channels, sample_rate, 0), 0)

    def write(self, frame_index: int, interleaved: bytes | memoryview) -> None:
        """Write interleaved samples (any contiguous buffer) starting at `frame_index` (one
        frame = all channels)."""
        assert self.fd is not None
        offset = frame_index * self.block
        n = memoryview(interleaved).nbytes
        if n:
            _pwrite(self.fd, interleaved, HEADER_BYTES + offset)
        end = offset + n
        if end > self.data_bytes:
            self.data_bytes = end
            _pwrite(self.fd, header(self.channels, self.sample_rate, end), 0)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
