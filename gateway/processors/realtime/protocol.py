"""The OpenAI Realtime protocol, sans-IO: client events out, server events in.

Owns: every wire spelling of the Realtime API as OpenAI, Azure OpenAI and Azure AI Voice Live
speak it, in both generations: the GA names (`response.output_audio.delta`, session
`{"type": "realtime", "audio": {...}}`) and the earlier beta/preview names (`response.audio.delta`,
`input_audio_format`, ...). Incoming events are parsed into frozen values whatever their
generation; outgoing ones are written in the configured `dialect`. Never: sockets, tasks,
clocks, logging, or which events a barge-in sends (`conversation` decides, with the client
events built here).

Audio deltas are most of what a model sends: `parse` takes their base64 out of the raw bytes
before JSON parsing, and the bridge decodes it once (`deltas`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from .deltas import decode_audio as decode_audio
from .deltas import without_delta

GA: Final = "ga"
BETA: Final = "beta"
DIALECTS: Final = (GA, BETA)
MODEL_RATE: Final = 24000  # the Realtime API's PCM16 is 24 kHz mono

# -- server events -----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SessionReady:
    """session.created or session.updated."""

    updated: bool


@attrs.frozen(slots=True)
class ResponseCreated:
    response_id: str | None


@attrs.frozen(slots=True)
class ResponseDone:
    response_id: str | None
    status: str | None  # completed, cancelled, failed, incomplete


@attrs.frozen(slots=True)
class AudioDelta:
    """A piece of an assistant item's audio: base64 PCM16 at 24 kHz."""

    response_id: str | None
    item_id: str
    content_index: int
    audio: str


@attrs.frozen(slots=True)
class AudioDone:
    response_id: str | None
    item_id: str


@attrs.frozen(slots=True)
class SpeechStarted:
    """The model's VAD heard the caller start speaking."""

    audio_start_ms: int | None
    item_id: str | None


@attrs.frozen(slots=True)
class SpeechStopped:
    """The model's VAD heard the caller stop speaking: the end of the caller's turn."""

    audio_end_ms: int | None


@attrs.frozen(slots=True)
class Transcript:
    """A finished transcript: of the caller's audio (`who` "caller") or of the bot's reply."""

    who: str
    text: str
    item_id: str | None


@attrs.frozen(slots=True)
class ToolCall:
    """The model called a tool (function): its name and JSON arguments, as sent."""

    name: str | None
    call_id: str | None
    arguments: str | None
    response_id: str | None = None  # the response that made the call


@attrs.frozen(slots=True)
class UpstreamError:
    """An `error` event. Most are recoverable; `fatal` says this one ends the session."""

    type: str | None
    code: str | None
    message: str | None

    @property
    def fatal(self) -> bool:
        return self.type in _FATAL_ERROR_TYPES or self.code in _FATAL_ERROR_CODES


@attrs.frozen(slots=True)
class OtherEvent:
    """Anything else (transcripts, item bookkeeping, rate limits): the bridge ignores it."""

    type: str


ServerEvent = (
    SessionReady
    | ResponseCreated
    | ResponseDone
    | AudioDelta
    | AudioDone
    | SpeechStarted
    | SpeechStopped
    | Transcript
    | ToolCall
    | UpstreamError
    | OtherEvent
)

_FATAL_ERROR_TYPES: Final = frozenset({"server_error", "authentication_error"})
_FATAL_ERROR_CODES: Final = frozenset({"session_expired", "invalid_api_key", "session_closed"})
_AUDIO_DELTA: Final = frozenset({"response.output_audio.delta", "response.audio.delta"})
_AUDIO_DONE: Final = frozenset({"response.output_audio.done", "response.audio.done"})
_BOT_TRANSCRIPT: Final = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)
_CALLER_TRANSCRIPT: Final = "conversation.item.input_audio_transcription.completed"


class MalformedEvent(ValueError):
    """The upstream sent something that is not a Realtime event (counted, then skipped)."""


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _loads(message: str | bytes) -> Any:
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None


def parse(message: str | bytes) -> ServerEvent:
    """Parse one server event (GA or beta spelling)."""
    delta = None
    event = None
    if type(message) is bytes:
        cut = without_delta(message)
        if cut is not None:
            event = _loads(cut[0])
            delta = cut[1]
            if type(event) is not dict or event.get("delta") != "":
                event, delta = None, None  # that was not the event's own delta: parse it all
    if event is None:
        event = _loads(message)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise MalformedEvent("not an event object with a 'type'")
    kind: str = event["type"]
    if delta is not None:
        event["delta"] = delta  # a text delta's string, put back (an audio one's stays out)
    if kind in _AUDIO_DELTA:
        item_id, audio = event.get("item_id"), event.get("delta")
        if not isinstance(item_id, str) or not isinstance(audio, str):
            raise MalformedEvent(f"{kind} without item_id or delta")
        index = event.get("content_index")
        return AudioDelta(
            _str(event, "response_id"), item_id, index if isinstance(index, int) else 0, audio
        )
    if kind == "input_audio_buffer.speech_started":
        start = event.get("audio_start_ms")
        return SpeechStarted(start if isinstance(start, int) else None, _str(event, "item_id"))
    if kind == "input_audio_buffer.speech_stopped":
        end = event.get("audio_end_ms")
        return SpeechStopped(end if isinstance(end, int) else None)
    if kind in _BOT_TRANSCRIPT or kind == _CALLER_TRANSCRIPT:
        who = "caller" if kind == _CALLER_TRANSCRIPT else "bot"
        return Transcript(who, _str(event, "transcript") or "", _str(event, "item_id"))
    if kind == "response.output_item.done":
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            # the same call as its arguments' .done (the bridge answers it once); some
            # providers name the function only here
            return ToolCall(
                _str(item, "name"),
                _str(item, "call_id"),
                _str(item, "arguments"),
                _str(event, "response_id"),
            )
        return OtherEvent(kind)
    if kind == "response.function_call_arguments.done":
        return ToolCall(
            _str(event, "name"),
            _str(event, "call_id"),
            _str(event, "arguments"),
            _str(event, "response_id"),
        )
    if kind in _AUDIO_DONE:
        return AudioDone(_str(event, "response_id"), _str(event, "item_id") or "")
    if kind == "response.created" or kind == "response.done":
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        if kind == "response.created":
            return ResponseCreated(_str(response, "id"))
        return ResponseDone(_str(response, "id"), _str(response, "status"))
    if kind == "session.created" or kind == "session.updated":
        return SessionReady(kind == "session.updated")
    if kind == "error":
        error = event.get("error")
        error = error if isinstance(error, dict) else {}
        return UpstreamError(_str(error, "type"), _str(error, "code"), _str(error, "message"))
    return OtherEvent(kind)


# -- client events -----------------------------------------------------------------------------

_APPEND_HEAD: Final = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL: Final = '"}'


def append_audio(b64: str) -> str:
    """input_audio_buffer.append with base64 PCM16 at 24 kHz (no JSON escaping is needed)."""
    return _APPEND_HEAD + b64 + _APPEND_TAIL


def cancel_response(response_id: str | None) -> str:
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id is not None:
        event["response_id"] = response_id
    return orjson.dumps(event).decode()


def truncate_item(item_id: str, content_index: int, audio_end_ms: int) -> str:
    return orjson.dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    ).decode()


def function_call_output(call_id: str, output: str) -> str:
    """A tool's result, as a conversation item (the model reads it at its next response)."""
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def user_text(text: str) -> str:
    """A user message in text (what the caller did, told to the model in words)."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def create_response(instructions: str | None = None) -> str:
    """Ask for a response now; `instructions` apply to this response only (same in both
    generations)."""
    if instructions is None:
        return '{"type":"response.create"}'
    return orjson.dumps(
        {"type": "response.create", "response": {"instructions": instructions}}
    ).decode()


def delete_item(item_id: str) -> str:
    return orjson.dumps({"type": "conversation.item.delete", "item_id": item_id}).decode()


@attrs.frozen(kw_only=True)
class SessionSettings:
    """What the model is told at the start of every session (from the configuration)."""

    instructions: str | None = None
    voice: str | dict[str, Any] | None = None
    turn_detection: dict[str, Any] | None = attrs.field(factory=lambda: {"type": "server_vad"})
    transcription: dict[str, Any] | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)  # merged last, as given


def session_update(settings: SessionSettings, dialect: str, rate: int = MODEL_RATE) -> str:
    """The session.update that configures audio in and out as PCM16 at `rate` (24 kHz unless
    the provider takes the call's own: Voice Live's 16 kHz), in `dialect`."""
    session: dict[str, Any]
    if dialect == GA:
        pcm = {"type": "audio/pcm", "rate": rate}
        audio_in: dict[str, Any] = {"format": pcm, "turn_detection": settings.turn_detection}
        if settings.transcription is not None:
            audio_in["transcription"] = settings.transcription
        audio_out: dict[str, Any] = {"format": pcm}
        if settings.voice is not None:
            audio_out["voice"] = settings.voice
        session = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": audio_out},
        }
    else:
        session = {
            "modalities": ["audio", "text"],
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": settings.turn_detection,
        }
        if rate != MODEL_RATE:  # Voice Live's spelling of another rate, in and out
            session["input_audio_sampling_rate"] = rate
            session["output_audio_format"] = f"pcm16_{rate}hz"
        if settings.voice is not None:
            session["voice"] = settings.voice
        if settings.transcription is not None:
            session["input_audio_transcription"] = settings.transcription
    if settings.instructions is not None:
        session["instructions"] = settings.instructions
    _merge(session, settings.extra)
    return orjson.dumps({"type": "session.update", "session": session}).decode()


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def audio_bytes(b64: str) -> int:
    """Decoded length of padded base64, without decoding it."""
    return len(b64) * 3 // 4 - (2 if b64.endswith("==") else 1 if b64.endswith("=") else 0)
