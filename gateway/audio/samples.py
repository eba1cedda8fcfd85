"""Bundled speech samples and WAV reading, for the test helpers and the load simulator.

Owns: the clips in `gateway/audio/data/` (real speech, synthesised with espeak-ng), reading a
PCM16 mono WAV file, and cutting PCM into 20 ms frames. Never: sockets, tasks, clocks; any
knowledge of who plays the audio (`gateway.testing`, `gateway.simulate` both build on this).
"""

from __future__ import annotations

import wave
from importlib.resources import files
from pathlib import Path

from ..acs.packets import frame_bytes

DATA = files("gateway.audio") / "data"


def speech_path(sample_rate: int = 16000, name: str = "speech") -> Path:
    """A bundled clip of real speech (espeak-ng): `speech` at 16 or 24 kHz, `interrupt` at
    16 kHz."""
    return Path(str(DATA / f"{name}-{sample_rate // 1000}k.wav"))


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """(PCM16 mono bytes, sample rate) of a WAV file; raises ValueError for any other format."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(
                f"{path}: need 16-bit mono PCM, got {w.getsampwidth() * 8}-bit "
                f"{w.getnchannels()}-channel"
            )
        return w.readframes(w.getnframes()), w.getframerate()


def speech(sample_rate: int = 16000, name: str = "speech") -> bytes:
    """The PCM16 of a bundled clip."""
    pcm, rate = read_wav(speech_path(sample_rate, name))
    assert rate == sample_rate
    return pcm


def frames(pcm: bytes, sample_rate: int) -> list[bytes]:
    """Split PCM into 20 ms frames; the last one is padded with silence to a whole frame."""
    size = frame_bytes(sample_rate)
    out = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + bytes(size - len(out[-1]))
    return out
