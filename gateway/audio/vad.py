"""Local voice activity detection: notice the caller speaking before the model says so.

Owns: deciding, frame by frame, when speech starts and ends. Never: acting on it (the realtime
bridge decides what a speech start or end means), I/O, or clocks.

`WebRtcVad` uses the WebRTC VAD (the optional `vad` extra, `webrtcvad-wheels`: a C extension,
no model download). WebRTC's VAD takes 16 kHz (among others) but not 24 kHz, so 24 kHz calls
are resampled to 16 kHz first, with state. A speech start is reported once after
`min_speech_ms` of consecutive voiced frames, and again only after `min_silence_ms` of
unvoiced ones, so one utterance is one start; that moment is the utterance's end (`ended`).
"""

from __future__ import annotations

from typing import Final

from ..acs.packets import FRAME_MS, frame_bytes
from .resample import StreamResampler

VAD_RATES: Final = (8000, 16000, 32000, 48000)  # what the WebRTC VAD accepts


class WebRtcVad:
    """Report the start of each utterance in a stream of 20 ms PCM16 frames."""

    def __init__(
        self,
        sample_rate: int,
        *,
        aggressiveness: int = 3,
        min_speech_ms: int = 60,
        min_silence_ms: int = 300,
    ) -> None:
        import webrtcvad  # optional: the `vad` extra

        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"vad aggressiveness must be 0-3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)
        rate = sample_rate if sample_rate in VAD_RATES else 16000
        self._rate = rate
        self._resampler = StreamResampler(sample_rate, rate)
        self._frame = frame_bytes(rate)
        self._pending = bytearray()
        self._speech_frames_needed = max(1, min_speech_ms // FRAME_MS)
        self._silence_frames_needed = max(1, min_silence_ms // FRAME_MS)
        self._voiced = 0
        self._unvoiced = 0
        self.speaking = False
        self.ended = False  # an utterance ended within the audio last fed

    def feed(self, pcm: bytes) -> bool:
        """Feed caller audio; True if an utterance started within it (`ended` then says
        whether one ended within it)."""
        self._pending += self._resampler.process(pcm)
        started = self.ended = False
        frame = self._frame
        while len(self._pending) >= frame:
            voiced = self._vad.is_speech(bytes(self._pending[:frame]), self._rate)
            del self._pending[:frame]
            if voiced:
                self._voiced += 1
                self._unvoiced = 0
                if not self.speaking and self._voiced >= self._speech_frames_needed:
                    self.speaking = started = True
            else:
                self._unvoiced += 1
                self._voiced = 0
                if self.speaking and self._unvoiced >= self._silence_frames_needed:
                    self.speaking = False
                    self.ended = True
        return started
