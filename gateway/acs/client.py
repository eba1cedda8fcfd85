"""Sans-IO client side of an ACS media-streaming WebSocket, for the load simulator.

Owns: the upgrade request and the check of its answer, masked client frames, reading the
server's (unmasked) frames, the inbound ACS packets as text, sorting what the gateway sends
into audio / stop-audio / other, and the tag that lets an echoed frame be matched to the frame
it echoes. Never: I/O, clocks, tasks.

Why not the peer in `gateway.testing` (trio-websocket): the simulator must run hundreds of
calls from one core without being the bottleneck; trio-websocket puts a task and a channel in
front of every message and wsproto's parser costs more per frame than everything else here
(README, "Performance"). Per frame this module costs a few microseconds: one tag, one base64,
one f-string, one XOR.

The tag: the 32 low-order bits of the first 32 samples of every frame carry the call's frame
sequence number (16 bits) and a 16-bit check. That changes each sample by at most one step in
32768 (inaudible, and harmless to speech recognition), survives an echo byte for byte, and a
frame the processor made itself matches by chance once in 65536 frames at most, and only if
the sequence is one the call really sent recently.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Sequence
from typing import Final

import orjson
import pybase64

from ..errors import CLOSE_NO_STATUS
from ..wire import framing
from .packets import frame_bytes

TIMESTAMP: Final = "2024-11-15T19:16:12.925Z"  # ACS sends ISO-8601; gateways do not interpret it
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_RESPONSE_HEAD: Final = 16384

# -- the upgrade --


def upgrade_request(
    host: str, resource: str, headers: Sequence[tuple[str, str]]
) -> tuple[bytes, bytes]:
    """The HTTP upgrade request ACS sends, and the `Sec-WebSocket-Accept` value to expect."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    accept = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than a valid 101."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"upgrade refused: {status} {detail}".strip())
        self.status = status


def parse_upgrade_response(buffer: bytearray, accept: bytes) -> int | None:
    """Bytes of `buffer` taken by a complete 101 response, or None while the head is
    incomplete. Raises `UpgradeRefused` for any other status or a wrong accept key."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_RESPONSE_HEAD:
            raise UpgradeRefused(0, "response head too long")
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise UpgradeRefused(0, f"not HTTP: {head[0][:60]!r}") from None
    if status != 101:
        raise UpgradeRefused(status, parts[2] if len(parts) > 2 else "")
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("sec-websocket-accept", "").encode() != accept:
        raise UpgradeRefused(101, "wrong Sec-WebSocket-Accept")
    return end + 4


# -- frames --


def masked_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final client frame. Masking is the same XOR as unmasking."""
    head = bytearray(framing._header(opcode, len(payload)))
    head[1] |= 0x80
    return bytes(head) + mask + framing._unmask(payload, mask)


def masked_text(text: str, mask: bytes) -> bytes:
    return masked_frame(framing.OP_TEXT, text.encode(), mask)


def masked_close(code: int, mask: bytes) -> bytes:
    return masked_frame(framing.OP_CLOSE, code.to_bytes(2, "big"), mask)


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


def pong(payload: bytes, mask: bytes) -> bytes:
    return masked_frame(framing.OP_PONG, payload, mask)


# -- inbound ACS packets (what the simulator sends) --


def metadata_text(sample_rate: int) -> str:
    return orjson.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": str(uuid.uuid4()),
                "encoding": "PCM",
                "sampleRate": sample_rate,
                "channels": 1,
                "length": frame_bytes(sample_rate),
            },
        }
    ).decode()


def audio_text(pcm: bytes, participant: str | None, silent: bool) -> str:
    data = pybase64.b64encode_as_string(pcm)
    who = f',"participantRawID":{orjson.dumps(participant).decode()}' if participant else ""
    quiet = "true" if silent else "false"
    return (
        f'{{"kind":"AudioData","audioData":{{"timestamp":"{TIMESTAMP}"{who},'
        f'"data":"{data}","silent":{quiet}}}}}'
    )


def dtmf_text(tone: str) -> str:
    return orjson.dumps({"kind": "DtmfData", "dtmfData": {"data": tone}}).decode()


# -- what the gateway sends --

AUDIO: Final = "audioData"
STOP: Final = "stopAudio"
OTHER: Final = "other"


def classify(message: bytes) -> tuple[str, str]:
    """("audioData", base64 data) | ("stopAudio", "") | ("other", "")."""
    try:
        obj = orjson.loads(message)
        kind = obj.get("kind")
        if kind == AUDIO:
            return AUDIO, obj["audioData"]["data"]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return OTHER, ""
    return (STOP, "") if kind == STOP else (OTHER, "")


def b64_pcm_bytes(data: str) -> int:
    """PCM bytes in a base64 string, without decoding it."""
    return len(data) * 3 // 4 - data.count("=", -2)


# -- the echo tag --

TAG_SAMPLES: Final = 32
# The tag lives in the low bytes of samples 0..31: bytes 0, 2, ..., 62. The first 63 bytes are
# 84 base64 characters exactly (63 = 3 * 21), so the rest of a frame's base64 does not depend
# on the tag and is computed once per clip frame (`AudioFrames`).
HEAD_BYTES: Final = 63
_HEAD_B64: Final = HEAD_BYTES // 3 * 4
_KEEP: Final = ((1 << (8 * HEAD_BYTES)) - 1) ^ sum(1 << (16 * i) for i in range(TAG_SAMPLES))
_SPREAD: Final = [sum(((b >> j) & 1) << (16 * j) for j in range(8)) for b in range(256)]


def _check(seq: int) -> int:
    return ((seq * 0x9E37) ^ 0xA5C3) & 0xFFFF


def _tag_head(head: bytes, seq: int) -> bytes:
    word = (seq & 0xFFFF) | _check(seq & 0xFFFF) << 16
    spread = (
        _SPREAD[word & 0xFF]
        | _SPREAD[(word >> 8) & 0xFF] << 128
        | _SPREAD[(word >> 16) & 0xFF] << 256
        | _SPREAD[word >> 24] << 384
    )
    return (int.from_bytes(head, "little") & _KEEP | spread).to_bytes(HEAD_BYTES, "little")


def tag(pcm: bytes, seq: int) -> bytes:
    """`pcm` with frame number `seq` (mod 65536) in the low bits of its first 32 samples."""
    if len(pcm) < HEAD_BYTES + 1:
        return pcm
    return _tag_head(pcm[:HEAD_BYTES], seq) + pcm[HEAD_BYTES:]


def read_tag(data: str) -> int | None:
    """The frame number tagged into base64 audio `data`, or None if it carries no valid tag."""
    if len(data) < _HEAD_B64:
        return None
    try:
        head = int.from_bytes(pybase64.b64decode(data[:_HEAD_B64]), "little")
    except ValueError:
        return None
    word = 0
    for i in range(TAG_SAMPLES):
        word |= ((head >> (16 * i)) & 1) << i
    seq = word & 0xFFFF
    return seq if word >> 16 == _check(seq) else None


# -- fast AudioData frames --


def _xor(data: bytes, key: bytes, offset: int) -> bytes:
    """`data` masked as if it started at byte `offset` of a payload masked with `key`."""
    r = offset % 4
    return framing._unmask(data, key[r:] + key[:r])


class AudioFrames:
    """Masked, tagged `AudioData` frames for many calls, at a few microseconds each.

    Byte for byte the same message as `audio_text(tag(pcm, seq), participant, silent)`, with
    `data` last, masked with one random key per `AudioFrames` (one per simulator process: an
    unpredictable key, as RFC 6455 asks; only its reuse across this process's connections is
    a shortcut, invisible to a server). What does not depend on the frame number (the JSON
    around the audio, and the base64 after the tagged head, masked) is computed once per clip
    frame and shared by every call, so a frame costs one small tag, one 84-character base64,
    and masking those 84 bytes. The frame header and the masked JSON prefix are cached too.
    The caches grow with the distinct clip frames given: meant for a scenario's clips.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or os.urandom(4)
        self._prefixes: dict[tuple[str | None, bool], bytes] = {}
        self._tails: dict[tuple[bytes, int], bytes] = {}  # base64 after the head, masked
        self._masked: dict[tuple[bytes, int], bytes] = {}  # header, key, masked JSON prefix

    def text(self, pcm: bytes, seq: int, participant: str | None, silent: bool) -> str:
        """The message (unmasked), e.g. for a recording."""
        prefix = self._prefix(participant, silent).decode()
        return prefix + pybase64.b64encode_as_string(tag(pcm, seq)) + '"}}'

    def frame(self, pcm: bytes, seq: int, participant: str | None, silent: bool) -> bytes:
        prefix = self._prefix(participant, silent)
        at = len(prefix)
        end = at + _HEAD_B64
        tail = self._tails.get((pcm, end % 4))
        if tail is None:
            tail = self._tails[(pcm, end % 4)] = _xor(
                pybase64.b64encode(pcm[HEAD_BYTES:]) + b'"}}', self.key, end
            )
        length = end + len(tail)
        masked_prefix = self._masked.get((prefix, length))
        if masked_prefix is None:
            header = bytearray(framing._header(framing.OP_TEXT, end + len(tail)))
            header[1] |= 0x80
            masked_prefix = self._masked[prefix] = (
                bytes(header) + self.key + _xor(prefix, self.key, 0)
            )
        head = pybase64.b64encode(_tag_head(pcm[:HEAD_BYTES], seq))
        return b"".join((masked_prefix, _xor(head, self.key, at), tail))

    def _prefix(self, participant: str | None, silent: bool) -> bytes:
        prefix = self._prefixes.get((participant, silent))
        if prefix is None:
            who = f',"participantRawID":{orjson.dumps(participant).decode()}' if participant else ""
            quiet = "true" if silent else "false"
            prefix = self._prefixes[(participant, silent)] = (
                f'{{"kind":"AudioData","audioData":{{"timestamp":"{TIMESTAMP}"{who},'
                f'"silent":{quiet},"data":"'
            ).encode()
        return prefix
