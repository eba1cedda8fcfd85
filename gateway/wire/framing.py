"""Sans-IO RFC 6455 framing for both sides of an upgraded connection.

Owns: frames -> events (unmasking, fragmentation, control frames, size cap) and messages ->
frames, unmasked (server to client) or masked (client to server). Never: I/O, connection state
(see `gateway.wire.connection`), the HTTP handshake (see `gateway.wire.handshake`), JSON.

Why our own: the data path is the gateway's hottest code. wsproto (a fine, general engine) spends
more per 1 KB frame in its generic Python parser than the rest of a frame's path together;
`bench/pieces.py` has the numbers. This module does the one thing each side needs, strictly:

- Client frames must be masked and server frames must not be (`FrameReader(masked=False)`
  reads a server's frames, for the gateway's own client side); RSV bits must be 0 (no
  extensions are negotiated); opcodes are continuation, text, binary, close, ping, pong;
  control frames are final and at most 125 bytes; a continuation needs an open message and a
  new data frame must not interrupt one; a close frame's code is one a peer may send.
  A violation raises `FramingError(1002)`, with the events the same bytes completed before it
  (`FramingError.events`: messages that arrived whole still count).
- A message over `max_message_bytes` raises `FramingError(1009)` as soon as its header says so,
  before the payload is buffered. Text that is not UTF-8 raises `FramingError(1007)`.
- Messages are `TextMessage` (UTF-8 checked) or `BinaryMessage` values whose `data` is the
  unmasked payload, uncopied. `Ping` and `Close` are the control events; a pong is returned
  (`Pong`) only when reading a server's frames (the client is the side that pings; the
  gateway's server never does, so it drops them). A `Close` ends a read: bytes after it are not
  parsed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final

from ..errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    FramingError,
)
from .events import BinaryMessage, Close, Event, Message, Ping, Pong, TextMessage

__all__ = [
    "BinaryMessage",
    "Close",
    "Event",
    "FrameReader",
    "FramingError",
    "MaskKeys",
    "Message",
    "Ping",
    "Pong",
    "TextMessage",
    "close_payload",
    "encode_close",
    "encode_pong",
    "encode_text",
    "encode_texts",
    "frame_header",
    "masked_frame",
    "masked_header",
    "unmask",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

# Close codes a peer may send (RFC 6455 section 7.4 and IANA's registry): 1004 is reserved,
# 1005, 1006 and 1015 only report what happened locally, the rest below 3000 are unassigned.
_SENDABLE_CODES: Final = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


def _unmask_python(data: bytes | bytearray, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


# `unmask(data, mask)`: `data` XORed with the 4-byte `mask` repeated (RFC 6455 section 5.3);
# masking is the same operation. Every client frame's payload passes through it, so it is
# websockets' C loop (~0.3 us per 1 KB frame, where the big-integer XOR above takes ~3 us),
# or the XOR above when that extension is not built (same result).
unmask: Callable[[bytes | bytearray, bytes], bytes]
try:
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - a websockets build without its C extension
    unmask = _unmask_python


class FrameReader:
    """Feed it bytes from the socket; it returns the events those bytes completed."""

    __slots__ = (
        "max_message_bytes",
        "_buffer",
        "_mask_bytes",
        "_parts",
        "_part_bytes",
        "_part_opcode",
    )

    def __init__(self, max_message_bytes: int, *, masked: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self._mask_bytes = 4 if masked else 0  # masked: a client's frames (we are the server)
        self._buffer = bytearray()
        self._parts: list[bytes] = []  # fragments of the open message
        self._part_bytes = 0
        self._part_opcode = 0  # opcode of the open fragmented message, 0 when none

    def receive(self, data: bytes | bytearray) -> list[Event]:
        buffer = self._buffer
        view: bytes | bytearray
        if buffer:  # a frame was cut between reads: parse from the joined bytes
            buffer += data
            view = buffer
        else:  # the usual case: parse the read itself, no copy into the buffer
            view = data
        events: list[Event] = []
        pos = 0
        end = len(view)
        mask_bytes = self._mask_bytes
        try:
            while end - pos >= 2:
                b0 = view[pos]
                b1 = view[pos + 1]
                length = b1 & 0x7F
                header = 2 + mask_bytes
                if length == 126:
                    if end - pos < 4:
                        break
                    length = _U16.unpack_from(view, pos + 2)[0]
                    header = 4 + mask_bytes
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = _U64.unpack_from(view, pos + 2)[0]
                    header = 10 + mask_bytes
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                if b0 & 0x70:
                    raise FramingError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
                if not b1 & 0x80 and mask_bytes:
                    raise FramingError(CLOSE_PROTOCOL_ERROR, "client frame not masked")
                if b1 & 0x80 and not mask_bytes:
                    raise FramingError(CLOSE_PROTOCOL_ERROR, "server frame masked")
                if opcode >= OP_CLOSE:
                    if not fin or length > 125:
                        raise FramingError(CLOSE_PROTOCOL_ERROR, "bad control frame")
                elif self._part_bytes + length > self.max_message_bytes:
                    raise FramingError(CLOSE_MESSAGE_TOO_BIG, "message too big")
                if end - pos < header + length:
                    break
                start = pos + header
                if mask_bytes:
                    payload = unmask(view[start : start + length], bytes(view[start - 4 : start]))
                else:
                    payload = bytes(view[start : start + length])
                pos = start + length
                event = self._frame(opcode, fin, payload)
                if event is not None:
                    events.append(event)
                    if type(event) is Close:
                        break
        except FramingError as error:
            if view is data:  # keep the read: parsing it again fails again (a failed reader)
                buffer += data
            error.events = list(events)
            raise
        if view is buffer:
            del buffer[:pos]
        elif pos < end:  # the start of a frame whose rest comes with the next read
            buffer += data[pos:]
        return events

    def _frame(self, opcode: int, fin: int, payload: bytes) -> Event | None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._part_opcode:
                raise FramingError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return _message(opcode, payload)
            self._part_opcode = opcode
            self._parts = [payload]
            self._part_bytes = len(payload)
            return None
        if opcode == OP_CONTINUATION:
            if not self._part_opcode:
                raise FramingError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            self._parts.append(payload)
            self._part_bytes += len(payload)
            if not fin:
                return None
            message = _message(self._part_opcode, b"".join(self._parts))
            self._parts, self._part_bytes, self._part_opcode = [], 0, 0
            return message
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return None if self._mask_bytes else Pong(payload)
        if opcode == OP_CLOSE:
            return _close(payload)
        raise FramingError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")


def _message(opcode: int, payload: bytes) -> Message:
    if opcode == OP_BINARY:
        return BinaryMessage(payload)
    if not payload.isascii():  # ACS sends ASCII JSON: the full check is the rare case
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FramingError(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8") from None
    return TextMessage(payload)


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise FramingError(CLOSE_PROTOCOL_ERROR, "one-byte close payload")
    code = _U16.unpack_from(payload)[0]
    if not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        raise FramingError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return Close(code, reason)


def frame_header(opcode: int, length: int) -> bytes:
    """The header of one final, unmasked frame of `length` payload bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + _U16.pack(length)
    return bytes((0x80 | opcode, 127)) + _U64.pack(length)


def encode_text(text: str) -> bytes:
    """One final, unmasked text frame (server to client)."""
    data = text.encode()
    return frame_header(OP_TEXT, len(data)) + data


def encode_texts(texts: list[str]) -> bytes:
    """Several text frames, for one write."""
    parts = []
    for text in texts:
        data = text.encode()
        parts.append(frame_header(OP_TEXT, len(data)))
        parts.append(data)
    return b"".join(parts)


def masked_header(opcode: int, length: int, mask: bytes) -> bytes:
    """The header of one final client frame of `length` payload bytes, ending with `mask`."""
    head = bytearray(frame_header(opcode, length))
    head[1] |= 0x80
    return bytes(head) + mask


def masked_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final client frame. Masking is the same XOR as unmasking."""
    return masked_header(opcode, len(payload), mask) + unmask(payload, mask)


class MaskKeys:
    """Masking keys for a client's frames: unpredictable, as RFC 6455 section 5.3 requires, and
    drawn from the OS in blocks, so a frame costs a slice rather than a system call."""

    __slots__ = ("_block", "_pos")

    BLOCK: Final = 4096  # 1024 keys per draw

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._block):
            self._block, pos = os.urandom(self.BLOCK), 0
        self._pos = pos + 4
        return self._block[pos : pos + 4]


def encode_pong(payload: bytes) -> bytes:
    return frame_header(OP_PONG, len(payload)) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then as much of the reason as fits (123 bytes)."""
    return _U16.pack(code) + reason.encode()[:123]


def encode_close(code: int, reason: str = "") -> bytes:
    data = close_payload(code, reason)
    return frame_header(OP_CLOSE, len(data)) + data
