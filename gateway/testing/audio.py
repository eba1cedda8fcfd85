"""Test audio: the bundled speech clips, WAV reading, and 20 ms framing.

Owns nothing: these live in `gateway.audio.samples` (the simulator uses them too); the names
stay importable here because tests and users import them from `gateway.testing`.
"""

from __future__ import annotations

from ..audio.samples import DATA, frames, read_wav, speech, speech_path

__all__ = ["DATA", "frames", "read_wav", "speech", "speech_path"]
