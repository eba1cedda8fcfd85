"""The model's audio deltas, cheaply: most of what a realtime model sends is
`response.output_audio.delta` events, and most of each is its base64.

Owns: cutting a delta's base64 out of the raw event bytes, so that orjson parses only the
rest (base64 needs no JSON escapes, so its end is the next quote; orjson would otherwise build
a string of the whole payload), and decoding it once, validating (pybase64's faster mode).
Never: the event's meaning (`protocol.parse` checks what the rest says), sockets, audio.
"""

from __future__ import annotations

from typing import Final

import pybase64

_DELTA_KEY: Final = b'"delta":"'


def without_delta(message: bytes) -> tuple[bytes, str] | None:
    """The event with its `"delta"` string emptied, and that string; None if the message has
    none that can be cut out without parsing (escapes in it, say)."""
    # The delta is usually the last member: its quotes are the last two (found with memrchr).
    end = message.rfind(b'"')
    start = message.rfind(b'"', 0, end) + 1 if end > 0 else 0
    if start < len(_DELTA_KEY) or not message.startswith(_DELTA_KEY, start - len(_DELTA_KEY)):
        key = message.find(_DELTA_KEY)
        if key < 0:
            return None
        start = key + len(_DELTA_KEY)
        end = message.find(b'"', start)
        if end < 0:
            return None
    if message.find(b"\\", start, end) >= 0:
        return None
    return message[:start] + message[end:], message[start:end].decode("ascii", "replace")


def decode_audio(b64: str) -> bytes:
    """A delta's PCM. Validating is pybase64's fast mode; anything it refuses is decoded
    leniently (characters outside the alphabet, non-ASCII ones too, skipped), as a
    non-validating decoder would. Raises `binascii.Error` if even that is not base64 (a wrong
    number of characters)."""
    try:
        return pybase64.b64decode(b64, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        return pybase64.b64decode(b64.encode("ascii", "ignore"))
