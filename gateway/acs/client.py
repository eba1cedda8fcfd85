"""Sans-IO client side of an ACS media-streaming WebSocket: what ACS Call Automation puts on the
wire and how it reads the gateway's answer. One module for the simulator, the test peers
(`gateway.testing`) and the tests.

Owns: ACS's upgrade headers (`x-ms-call-*`, an optional bearer token; the request itself and
the check of its 101 answer are `gateway.wire.client_handshake`'s), masked client frames,
reading the server's (unmasked) frames, the inbound ACS
packets as dicts and as text, and sorting what the gateway sends into audio / stop-audio /
other, by form (the spellings Microsoft's SDKs and samples use). Never: I/O, clocks, tasks;
the gateway's side of the wire (`gateway.wire`); anything only the simulator needs (the echo
tag: `gateway.simulate.tagging`).

Why not trio-websocket (which `gateway.testing.peer` uses): the simulator must run hundreds of
calls from one core without being the bottleneck; trio-websocket puts a task and a channel in
front of every message and wsproto's parser costs more per frame than everything else here.
Per frame this module costs a few microseconds: one base64, one f-string, one XOR.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import orjson
import pybase64

from ..errors import CLOSE_NO_STATUS
from ..wire import framing

# The upgrade and the masked frames are the wire's; named here too, for the simulator's callers.
from ..wire.client_handshake import MAX_RESPONSE_HEAD as MAX_RESPONSE_HEAD
from ..wire.client_handshake import UpgradeRefused as UpgradeRefused
from ..wire.client_handshake import parse_upgrade_response as parse_upgrade_response
from ..wire.client_handshake import upgrade_request as upgrade_request
from ..wire.framing import masked_frame as masked_frame
from ..wire.framing import masked_header as masked_header
from .packets import frame_bytes

TIMESTAMP: Final = "2024-11-15T19:16:12.925Z"  # ACS sends ISO-8601; gateways do not interpret it

# -- the upgrade --


def acs_headers(
    connection_id: str | None, correlation_id: str | None, token: str | None = None
) -> list[tuple[str, str]]:
    """The headers ACS adds to its upgrade request (each one only when given)."""
    headers = []
    if connection_id is not None:
        headers.append(("x-ms-call-connection-id", connection_id))
    if correlation_id is not None:
        headers.append(("x-ms-call-correlation-id", correlation_id))
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers


# -- frames --


def masked_text(text: str, mask: bytes) -> bytes:
    return masked_frame(framing.OP_TEXT, text.encode(), mask)


def masked_close(code: int, mask: bytes) -> bytes:
    return masked_frame(framing.OP_CLOSE, code.to_bytes(2, "big"), mask)


def pong(payload: bytes, mask: bytes) -> bytes:
    return masked_frame(framing.OP_PONG, payload, mask)


class ServerFrames:
    """Feed it bytes from the server; it returns the messages (bytes), pings (`framing.Ping`)
    and the close (`framing.Close`) those bytes completed. Fragmented messages are joined.
    Server frames must not be masked; a protocol error raises `framing.FramingError`."""

    __slots__ = ("_buffer", "_parts")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []

    def receive(self, data: bytes) -> list[bytes | framing.Ping | framing.Close]:
        buffer = self._buffer
        buffer += data
        events: list[bytes | framing.Ping | framing.Close] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            if b1 & 0x80:
                raise framing.FramingError(1002, "server frame masked")
            length, header = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, header = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, header = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if end - pos < header + length:
                break
            payload = bytes(buffer[pos + header : pos + header + length])
            pos += header + length
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode in (framing.OP_TEXT, framing.OP_BINARY, framing.OP_CONTINUATION):
                self._parts.append(payload)
                if fin:
                    events.append(b"".join(self._parts))
                    self._parts = []
            elif opcode == framing.OP_PING:
                events.append(framing.Ping(payload))
            elif opcode == framing.OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NO_STATUS
                events.append(framing.Close(code, payload[2:].decode("utf-8", "replace")))
                break
        del buffer[:pos]
        return events


# -- inbound ACS packets (what ACS sends), as dicts and as text --


def metadata_packet(sample_rate: int, subscription_id: str | None = None) -> dict[str, Any]:
    """`AudioMetadata` for 20 ms PCM16 mono frames; a random subscription id unless given."""
    return {
        "kind": "AudioMetadata",
        "audioMetadata": {
            "subscriptionId": subscription_id or str(uuid.uuid4()),
            "encoding": "PCM",
            "sampleRate": sample_rate,
            "channels": 1,
            "length": frame_bytes(sample_rate),
        },
    }


def audio_packet(
    pcm: bytes, participant: str | None = None, silent: bool = False
) -> dict[str, Any]:
    """`AudioData` with the keys in `audio_text`'s order: `orjson.dumps` of it is that text."""
    payload: dict[str, Any] = {"timestamp": TIMESTAMP}
    if participant is not None:
        payload["participantRawID"] = participant
    payload["silent"] = silent
    payload["data"] = pybase64.b64encode_as_string(pcm)
    return {"kind": "AudioData", "audioData": payload}


def dtmf_packet(tone: str) -> dict[str, Any]:
    return {"kind": "DtmfData", "dtmfData": {"data": tone}}


def metadata_text(sample_rate: int, subscription_id: str | None = None) -> str:
    return orjson.dumps(metadata_packet(sample_rate, subscription_id)).decode()


def audio_prefix(participant: str | None, silent: bool) -> str:
    """An `AudioData` message up to its base64 data, which comes last: the text before the
    audio does not depend on it, so a sender can build it once per (participant, silent)."""
    who = ""
    if participant is not None:
        who = f',"participantRawID":{orjson.dumps(participant).decode()}'
    quiet = "true" if silent else "false"
    return (
        f'{{"kind":"AudioData","audioData":{{"timestamp":"{TIMESTAMP}"{who},'
        f'"silent":{quiet},"data":"'
    )


AUDIO_SUFFIX: Final = '"}}'  # what follows the base64 data of an `AudioData` message


def audio_text(pcm: bytes, participant: str | None, silent: bool) -> str:
    return audio_prefix(participant, silent) + pybase64.b64encode_as_string(pcm) + AUDIO_SUFFIX


def dtmf_text(tone: str) -> str:
    return orjson.dumps(dtmf_packet(tone)).decode()


# -- what the gateway sends --

AUDIO: Final = "audioData"
STOP: Final = "stopAudio"
OTHER: Final = "other"

# The outbound forms (docs/simulate.md, "Message forms"): the spellings Microsoft's own SDKs and
# samples send, all accepted by ACS. `SDK` is the JS SDK's, which `gateway.acs.codec` emits.
SDK: Final = "sdk"  # {"kind":"audioData","audioData":{"data":..,"isSilent":false},"stopAudio":{}}
PASCAL: Final = "pascal"  # .NET SDK, Python quickstart: {"Kind":"AudioData","AudioData":{"Data"..
JAVA: Final = "java"  # Java SDK, semantic-kernel sample: {"kind":"AudioData","audioData":{..
UNRECOGNISED: Final = "unrecognised"
FORMS: Final = (SDK, PASCAL, JAVA)

# (kind member, kind value) -> (form, what it is, its payload member, the data member)
_SHAPES: Final = {
    ("kind", "audioData"): (SDK, AUDIO, "audioData", "data"),
    ("kind", "stopAudio"): (SDK, STOP, "stopAudio", ""),
    ("kind", "AudioData"): (JAVA, AUDIO, "audioData", "data"),
    ("kind", "StopAudio"): (JAVA, STOP, "stopAudio", ""),
    ("Kind", "AudioData"): (PASCAL, AUDIO, "AudioData", "Data"),
    ("Kind", "StopAudio"): (PASCAL, STOP, "StopAudio", ""),
}
_MEMBERS: Final = {
    "kind": frozenset({"kind", "audioData", "stopAudio"}),
    "Kind": frozenset({"Kind", "AudioData", "StopAudio"}),
}
_UNKNOWN: Final = (OTHER, "", UNRECOGNISED)


def classify_form(message: str | bytes) -> tuple[str, str, str]:
    """(what it is, base64 data, form): ("audioData", data, form) | ("stopAudio", "", form) |
    ("other", "", "unrecognised"). A message is of a form when its member names, its kind's
    spelling and its payload all match that form; anything else (other members, another kind,
    no data, not JSON) is unrecognised."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return _UNKNOWN
    if type(obj) is not dict:
        return _UNKNOWN
    key = "kind" if "kind" in obj else "Kind"
    kind = obj.get(key)
    shape = _SHAPES.get((key, kind)) if type(kind) is str else None
    if shape is None or not _MEMBERS[key].issuperset(obj):
        return _UNKNOWN
    form, what, member, data_member = shape
    payload = obj.get(member)
    if what == STOP:
        return (STOP, "", form) if payload is None or type(payload) is dict else _UNKNOWN
    data = payload.get(data_member) if type(payload) is dict else None
    if type(data) is not str:
        return _UNKNOWN
    return AUDIO, data, form


def classify(message: str | bytes) -> tuple[str, str]:
    """("audioData", base64 data) | ("stopAudio", "") | ("other", ""), in any known form."""
    what, data, _ = classify_form(message)
    return what, data
