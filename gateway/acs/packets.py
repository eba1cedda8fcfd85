"""Typed values for every packet on an ACS media-streaming WebSocket.

Owns: the shape of each packet, as the gateway's own code sees it (snake_case, decoded,
validated). Wire spellings live only in `gateway.codec`; see docs/protocol.md, "Inbound: envelope".
Never: I/O, clocks, or JSON. Every packet is a frozen attrs value, so it can be shared between
tasks and matched with `match`.

Inbound (ACS -> gateway): AudioMetadata, AudioData, DtmfData, TranscriptionMetadata,
TranscriptionData. Outbound (gateway -> ACS): OutboundAudio, StopAudio.
"""

from __future__ import annotations

from typing import Final

import attrs

# ACS streams and plays 20 ms frames (docs/protocol.md, "Audio format and timing").
FRAME_MS: Final = 20
BYTES_PER_SAMPLE: Final = 2  # PCM 16-bit signed little-endian, mono
SUPPORTED_SAMPLE_RATES: Final = (16000, 24000)


def frame_bytes(sample_rate: int) -> int:
    """Bytes in one 20 ms mono PCM16 frame: 640 at 16 kHz, 960 at 24 kHz."""
    return sample_rate * BYTES_PER_SAMPLE * FRAME_MS // 1000


def pcm_ms(n_bytes: int, sample_rate: int) -> float:
    """Duration in milliseconds of `n_bytes` of mono PCM16 at `sample_rate`."""
    return n_bytes * 1000 / (sample_rate * BYTES_PER_SAMPLE)


@attrs.frozen(slots=True)
class AudioMetadata:
    """First packet of an audio stream: the format every later AudioData frame has."""

    subscription_id: str | None
    encoding: str  # "PCM"; compared case-insensitively by the codec
    sample_rate: int  # 16000 or 24000
    channels: int  # 1
    length: int | None  # bytes per frame as ACS announced it (640 / 960); may be absent

    @property
    def frame_bytes(self) -> int:
        """Bytes per 20 ms frame, derived from the sample rate (the one source of truth)."""
        return frame_bytes(self.sample_rate)


@attrs.frozen(slots=True)
class AudioData:
    """One inbound audio frame. `pcm` is decoded and validated; `data` is the wire base64.

    `participant_raw_id` is set in unmixed mode (the speaker) and may be set or None in mixed mode.
    """

    pcm: bytes
    data: str
    timestamp: str | None
    participant_raw_id: str | None
    silent: bool


@attrs.frozen(slots=True)
class DtmfData:
    """A DTMF key press. `tone` is as ACS sent it ("3", "*", or a word such as "pound")."""

    tone: str
    timestamp: str | None
    participant_raw_id: str | None


@attrs.frozen(slots=True)
class TranscriptionMetadata:
    """First packet of a transcription stream."""

    subscription_id: str | None
    locale: str | None
    call_connection_id: str | None
    correlation_id: str | None
    speech_recognition_model_endpoint_id: str | None


@attrs.frozen(slots=True)
class TranscriptionWord:
    text: str
    offset_ticks: int | None  # 1 tick = 100 ns
    duration_ticks: int | None


@attrs.frozen(slots=True)
class TranscriptionData:
    """A recognized phrase. `result_status` is lower-cased: "final" or "intermediate"."""

    text: str
    format: str | None
    confidence: float | None
    offset_ticks: int | None
    duration_ticks: int | None
    words: tuple[TranscriptionWord, ...] | None
    participant_raw_id: str | None
    result_status: str | None

    @property
    def is_final(self) -> bool:
        return self.result_status == "final"


InboundPacket = AudioMetadata | AudioData | DtmfData | TranscriptionMetadata | TranscriptionData


@attrs.frozen(slots=True)
class OutboundAudio:
    """Audio for ACS to play: mono PCM16 at the call's sample rate, any whole number of samples."""

    pcm: bytes


@attrs.frozen(slots=True)
class StopAudio:
    """Tell ACS to drop the audio it has queued for playback (barge-in)."""


OutboundPacket = OutboundAudio | StopAudio
