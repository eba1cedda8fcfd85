"""Sans-IO codec: ACS media-streaming messages <-> `gateway.packets` values.

Owns: every wire spelling (docs/protocol.md, "Inbound: envelope" to "Outbound: stopAudio").
Never: I/O, clocks, `async`, logging. All protocol knowledge lives here; the rest of the
gateway sees packets.

Rules (docs/protocol.md, "Inbound: envelope" and "Inbound: unknown and malformed messages"):
- A message is one UTF-8 JSON object, in a text (`str`) or binary (`bytes`) frame.
- `kind` is matched case-insensitively; when it is missing or unknown, the payload key decides
  (the Java SDK's strategy). A message with neither is `unknown_kind`.
- Every payload field is optional where the protocol allows; JSON `null` counts as absent. Present
  fields of the wrong JSON type are `wrong_type`. Unknown keys are ignored.
- Audio is validated here (standard padded base64, whole 16-bit samples), so a processor never
  sees a frame it cannot use.
- Outbound messages are byte-for-byte what the official JS SDK 1.6.0 emits (docs/protocol.md,
  "Outbound: audioData").

Every failure is a `ProtocolError` whose `reason` says what was wrong.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson
import pybase64

from ..errors import ProtocolError
from ..wire.events import BinaryMessage, Message, TextMessage
from .packets import (
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
)

__all__ = [
    "InboundDecoder",
    "decode",
    "encode",
    "encode_audio",
    "encode_audio_b64",
    "STOP_AUDIO_MESSAGE",
]

# --- outbound --------------------------------------------------------------------------------

# JSON.stringify(createOutboundAudioData(b64)) from @azure/communication-call-automation 1.6.0,
# split around the base64 (which never needs JSON escaping).
_AUDIO_HEAD: Final = '{"kind":"audioData","audioData":{"data":"'
_AUDIO_TAIL: Final = '","isSilent":false},"stopAudio":{}}'
STOP_AUDIO_MESSAGE: Final = '{"kind":"stopAudio","stopAudio":{}}'


def encode_audio_b64(b64: str) -> str:
    """The outbound audio message for audio that is already base64 (echo passes it through)."""
    return _AUDIO_HEAD + b64 + _AUDIO_TAIL


def encode_audio(pcm: bytes) -> str:
    """The outbound audio message for raw PCM16 bytes."""
    return _AUDIO_HEAD + pybase64.b64encode_as_string(pcm) + _AUDIO_TAIL


def encode(packet: OutboundPacket) -> str:
    """Encode one outbound packet as the text of a WebSocket message."""
    match packet:
        case OutboundAudio(pcm=pcm):
            return encode_audio(pcm)
        case StopAudio():
            return STOP_AUDIO_MESSAGE
    raise TypeError(f"not an outbound packet: {packet!r}")


# --- inbound: field readers ------------------------------------------------------------------


_T = TypeVar("_T")


def _opt(
    payload: dict[str, Any], key: str, kind: type[_T] | tuple[type[_T], ...], where: str
) -> _T | None:
    """`payload[key]` if present and not null, checked against `kind`; else None."""
    value = payload.get(key)
    if value is None:
        return None
    # bool is an int in Python, never in JSON: reject true/false where a number is wanted.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(
            "wrong_type", f"{where}.{key} is {type(value).__name__}, expected {_names(kind)}"
        )
    return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _str(payload: dict[str, Any], key: str, where: str) -> str | None:
    return _opt(payload, key, str, where)


def _int(payload: dict[str, Any], key: str, where: str) -> int | None:
    return _opt(payload, key, int, where)


def _pcm(data: str, where: str) -> bytes:
    try:
        pcm = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_base64", f"{where}.data is not valid base64 ({exc})") from None
    if len(pcm) % 2:
        raise ProtocolError(
            "odd_length", f"{where}.data holds {len(pcm)} bytes, not whole 16-bit samples"
        )
    return pcm


# --- inbound: one reader per packet kind -----------------------------------------------------


def _audio_metadata(p: dict[str, Any]) -> AudioMetadata:
    w = "audioMetadata"
    encoding = _str(p, "encoding", w) or "PCM"
    if encoding.lower() != "pcm":
        raise ProtocolError("bad_value", f"{w}.encoding is {encoding!r}; only PCM is streamed")
    # 16 kHz is the service default (docs/protocol.md, "Audio format and timing").
    sample_rate = _int(p, "sampleRate", w) or 16000
    if sample_rate <= 0 or sample_rate % 50:
        raise ProtocolError("bad_value", f"{w}.sampleRate {sample_rate} gives no 20 ms frame")
    channels = _int(p, "channels", w) or 1
    if channels != 1:
        raise ProtocolError("bad_value", f"{w}.channels is {channels}; ACS streams mono")
    return AudioMetadata(
        subscription_id=_str(p, "subscriptionId", w),
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        length=_int(p, "length", w),
    )


def _audio_data(p: dict[str, Any]) -> AudioData:
    # The hot path (50 frames a second per call): the checks of `_opt` written out inline.
    data = p.get("data")
    timestamp = p.get("timestamp")
    participant = p.get("participantRawID")
    silent = p.get("silent")
    if (
        (data is not None and type(data) is not str)
        or (timestamp is not None and type(timestamp) is not str)
        or (participant is not None and type(participant) is not str)
        or (silent is not None and type(silent) is not bool)
    ):
        for key, kind in (
            ("data", str),
            ("timestamp", str),
            ("participantRawID", str),
            ("silent", bool),
        ):
            _opt(p, key, kind, "audioData")  # raises the precise wrong_type error
    return AudioData(
        pcm=_pcm(data, "audioData") if data else b"",
        data=data or "",
        timestamp=timestamp,
        participant_raw_id=participant or None,
        silent=silent is True,
    )


def _dtmf_data(p: dict[str, Any]) -> DtmfData:
    w = "dtmfData"
    tone = _str(p, "data", w)
    if not tone:
        raise ProtocolError("bad_value", f"{w}.data (the tone) is missing or empty")
    return DtmfData(
        tone=tone,
        timestamp=_str(p, "timestamp", w),
        participant_raw_id=_str(p, "participantRawID", w) or None,
    )


def _transcription_metadata(p: dict[str, Any]) -> TranscriptionMetadata:
    w = "transcriptionMetadata"
    return TranscriptionMetadata(
        subscription_id=_str(p, "subscriptionId", w),
        locale=_str(p, "locale", w),
        call_connection_id=_str(p, "callConnectionId", w),
        correlation_id=_str(p, "correlationId", w),
        speech_recognition_model_endpoint_id=_str(p, "speechRecognitionModelEndpointId", w),
    )


def _word(item: Any, i: int) -> TranscriptionWord:
    w = f"transcriptionData.words[{i}]"
    if not isinstance(item, dict):
        raise ProtocolError("wrong_type", f"{w} is {type(item).__name__}, expected object")
    return TranscriptionWord(
        text=_str(item, "text", w) or "",
        offset_ticks=_int(item, "offset", w),
        duration_ticks=_int(item, "duration", w),
    )


def _transcription_data(p: dict[str, Any]) -> TranscriptionData:
    w = "transcriptionData"
    words = _opt(p, "words", list, w)
    status = _str(p, "resultStatus", w)
    confidence = _opt(p, "confidence", (int, float), w)
    return TranscriptionData(
        text=_str(p, "text", w) or "",
        format=_str(p, "format", w),
        confidence=None if confidence is None else float(confidence),
        offset_ticks=_int(p, "offset", w),
        duration_ticks=_int(p, "duration", w),
        words=None if words is None else tuple(_word(x, i) for i, x in enumerate(words)),
        participant_raw_id=_str(p, "participantRawID", w) or None,
        result_status=None if status is None else status.lower(),
    )


# kind (lower-cased) -> (payload key, reader)
_READERS: Final[dict[str, tuple[str, Callable[[dict[str, Any]], InboundPacket]]]] = {
    "audiometadata": ("audioMetadata", _audio_metadata),
    "audiodata": ("audioData", _audio_data),
    "dtmfdata": ("dtmfData", _dtmf_data),
    "transcriptionmetadata": ("transcriptionMetadata", _transcription_metadata),
    "transcriptiondata": ("transcriptionData", _transcription_data),
}


def _payload(message: dict[str, Any], key: str) -> Any:
    if key in message:
        return message[key]
    lowered = key.lower()
    for k, v in message.items():  # tolerate "AudioData"-style payload keys
        if k.lower() == lowered:
            return v
    return None


def _utf8(message: Message | str | bytes) -> str | bytes:
    """The JSON text of a message that the frame reader did not check."""
    if isinstance(message, str):
        return message
    data = message.data if isinstance(message, TextMessage | BinaryMessage) else message
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("not_utf8", f"binary frame is not UTF-8 ({exc.reason})") from None
    return data


def decode(message: Message | str | bytes) -> InboundPacket:
    """Decode one inbound WebSocket message. Stateless; see `InboundDecoder` for ordering.
    A `TextMessage` is UTF-8 already (the frame reader checked); other bytes are checked here."""
    data = message.data if type(message) is TextMessage else _utf8(message)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("not_json", f"message is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not_object", f"message is a JSON {type(obj).__name__}, not an object")

    kind = obj.get("kind")
    if kind == "AudioData":  # 50 a second per call: skip the generic dispatch
        payload = obj.get("audioData")
        if type(payload) is dict:
            return _audio_data(payload)
    entry = _READERS.get(kind.lower()) if isinstance(kind, str) else None
    if entry is None:
        # Fall back to whichever known payload key the message carries.
        for candidate in _READERS.values():
            if isinstance(_payload(obj, candidate[0]), dict):
                entry = candidate
                break
        else:
            raise ProtocolError("unknown_kind", f"unknown kind {kind!r} and no known payload key")
    key, reader = entry
    payload = _payload(obj, key)
    if payload is None:
        raise ProtocolError("missing_payload", f"kind {kind!r} without a {key!r} object")
    if not isinstance(payload, dict):
        raise ProtocolError("wrong_type", f"{key} is {type(payload).__name__}, expected object")
    return reader(payload)


class InboundDecoder:
    """Per-connection decoding state: the stream's audio format, and ordering rules.

    - `AudioData` before `AudioMetadata` is `audio_before_metadata`.
    - A repeated `AudioMetadata` with the same format is accepted (and returned); one that
      changes the format mid-call is `metadata_changed` and does not change `metadata`.
    """

    __slots__ = ("metadata",)

    def __init__(self) -> None:
        self.metadata: AudioMetadata | None = None

    def decode(self, message: Message | str | bytes) -> InboundPacket:
        packet = decode(message)
        if type(packet) is AudioData:
            if self.metadata is None:
                raise ProtocolError("audio_before_metadata", "AudioData before AudioMetadata")
        elif type(packet) is AudioMetadata:
            if self.metadata is None:
                self.metadata = packet
            elif packet.sample_rate != self.metadata.sample_rate:
                raise ProtocolError(
                    "metadata_changed",
                    f"sampleRate changed from {self.metadata.sample_rate} to "
                    f"{packet.sample_rate} mid-call",
                )
        return packet
