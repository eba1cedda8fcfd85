"""The caller's audio on its way to the model: 24 kHz PCM16, in `input_audio_buffer.append`
events of `batch_frames` ACS frames each (`BATCH_FRAMES` by default).

Owns: the caller -> model resampler's state, the frames held for the next event, and the
24 kHz pass-through (ACS's base64 joined as it came, never decoded). Never: sockets, the
session's life, barge-in, or which participant is heard (the bridge chooses the packets).

Why batches: every event costs a resampler call, a JSON event, a masked frame and a socket
write, and most of that is per call rather than per byte. Two 20 ms frames per event (the
default) halve those calls for 20 ms of added delay before the model hears the caller, against
the model's own turn detection (hundreds of ms); the `uplink_batch_ms` option trades more of
one for the other. `bench/bridge_cpu.py --uplink-batch-ms` measures it and
docs/performance-realtime.md has the numbers. The gateway's own barge-in (local VAD) looks at every
frame as it comes and is not delayed. A caller's digital silence, once the resampler has
settled, costs neither soxr nor base64: its event is built once for all calls.
"""

from __future__ import annotations

import functools
from typing import Final

import pybase64

from ...acs.packets import AudioData
from ...audio.resample import StreamResampler, silence
from . import protocol

BATCH_FRAMES: Final = 2  # 20 ms ACS frames per append event


class Uplink:
    """`add(packet)` returns the append event to send now, or None while a batch fills;
    `flush()` returns what is held (at the end of the call)."""

    __slots__ = ("batch_frames", "frames", "pass_through", "to_model", "_b64", "_pcm")

    def __init__(
        self, rate: int, batch_frames: int = BATCH_FRAMES, model_rate: int = protocol.MODEL_RATE
    ) -> None:
        self.batch_frames = batch_frames
        self.pass_through = rate == model_rate  # ACS's base64 goes upstream untouched
        self.to_model = StreamResampler(rate, model_rate)
        self._b64: list[str] = []  # held frames, pass-through
        self._pcm: list[bytes] = []  # held frames as PCM: to be resampled, or joined
        self.frames = 0  # ACS frames in the event `add` or `flush` last returned

    def add(self, packet: AudioData) -> str | None:
        if self.pass_through:
            data = packet.data
            # Base64 pieces join into valid base64 only if none but the last has padding: a
            # 24 kHz frame (960 bytes) has none; a 16 kHz one (640) has, so its PCM is joined
            # and encoded once, and the batch holds as many frames either way.
            if not data.endswith("=") and not self._pcm:
                self._b64.append(data)
                if len(self._b64) < self.batch_frames:
                    return None
                return self.flush()
            if self._b64:  # frames of another size before this one: keep them, in order
                self._pcm = [pybase64.b64decode(b) for b in self._b64]
                self._b64 = []
        self._pcm.append(packet.pcm)
        if len(self._pcm) < self.batch_frames:
            return None
        return self.flush()

    def discard(self) -> int:
        """Forget what is held (its session failed: the next one must not hear it late, after
        the gap); returns how many ACS frames that was."""
        held = len(self._b64) + len(self._pcm)
        self._b64, self._pcm = [], []
        self.to_model.reset()
        return held

    def flush(self) -> str | None:
        if self._b64:
            held_b64, self._b64 = self._b64, []
            self.frames = len(held_b64)
            return protocol.append_audio("".join(held_b64))
        held, self._pcm = self._pcm, []
        self.frames = len(held)
        pcm = b"".join(held)
        if held and not self.pass_through:
            pcm = self.to_model.process(pcm)
        if not pcm:
            return None  # nothing held, or the resampler holds it back until the next batch
        if pcm == silence(len(pcm)):  # the caller is silent (see gateway.audio.resample)
            return _silent_append(len(pcm))
        return protocol.append_audio(pybase64.b64encode_as_string(pcm))


@functools.lru_cache(maxsize=8)
def _silent_append(n_bytes: int) -> str:
    """The append event of `n_bytes` of silence: built once, shared by every call."""
    return protocol.append_audio(pybase64.b64encode_as_string(silence(n_bytes)))
