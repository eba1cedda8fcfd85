"""The packets a processor sees: the public name of `gateway.acs.packets`."""

from .acs.packets import (
    BYTES_PER_SAMPLE,
    FRAME_MS,
    SUPPORTED_SAMPLE_RATES,
    AudioData,
    AudioMetadata,
    DtmfData,
    InboundPacket,
    OutboundAudio,
    OutboundPacket,
    StopAudio,
    TranscriptionData,
    TranscriptionMetadata,
    TranscriptionWord,
    frame_bytes,
    pcm_ms,
)

__all__ = [
    "BYTES_PER_SAMPLE",
    "FRAME_MS",
    "SUPPORTED_SAMPLE_RATES",
    "AudioData",
    "AudioMetadata",
    "DtmfData",
    "InboundPacket",
    "OutboundAudio",
    "OutboundPacket",
    "StopAudio",
    "TranscriptionData",
    "TranscriptionMetadata",
    "TranscriptionWord",
    "frame_bytes",
    "pcm_ms",
]
