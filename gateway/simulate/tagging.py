"""The echo tag and the simulator's fast `AudioData` frames.

Owns: the tag that lets an echoed frame be matched to the frame it echoes, reading it back from
base64 audio, and `AudioFrames`: masked, tagged client frames for many calls at a few
microseconds each. Never: I/O, clocks; the message layout or the framing (`gateway.acs.client`
owns both; this module only caches their pieces).

The tag: the 32 low-order bits of the first 32 samples of every frame carry the call's frame
sequence number (16 bits) and a 16-bit check. That changes each sample by at most one step in
32768 (inaudible, and harmless to speech recognition), survives an echo byte for byte, and a
frame the processor made itself matches by chance once in 65536 frames at most, and only if
the sequence is one the call really sent recently.
"""

from __future__ import annotations

import os
from typing import Final

import pybase64

from ..acs.client import AUDIO_SUFFIX, audio_prefix, masked_header
from ..wire.framing import OP_TEXT, unmask

TAG_SAMPLES: Final = 32
# The tag lives in the low bytes of samples 0..31: bytes 0, 2, ..., 62. The first 63 bytes are
# 84 base64 characters exactly (63 = 3 * 21), so the rest of a frame's base64 does not depend
# on the tag and is computed once per clip frame (`AudioFrames`).
HEAD_BYTES: Final = 63
_HEAD_B64: Final = HEAD_BYTES // 3 * 4
_KEEP: Final = ((1 << (8 * HEAD_BYTES)) - 1) ^ sum(1 << (16 * i) for i in range(TAG_SAMPLES))
_SPREAD: Final = [sum(((b >> j) & 1) << (16 * j) for j in range(8)) for b in range(256)]
_SUFFIX: Final = AUDIO_SUFFIX.encode()


def b64_pcm_bytes(data: str) -> int:
    """PCM bytes in a base64 string, without decoding it."""
    return len(data) * 3 // 4 - data.count("=", -2)


def _check(seq: int) -> int:
    return ((seq * 0x9E37) ^ 0xA5C3) & 0xFFFF


def _tag_bits(seq: int) -> int:
    """The tag of frame `seq` as bits of the head (read as one little-endian integer)."""
    word = (seq & 0xFFFF) | _check(seq & 0xFFFF) << 16
    return (
        _SPREAD[word & 0xFF]
        | _SPREAD[(word >> 8) & 0xFF] << 128
        | _SPREAD[(word >> 16) & 0xFF] << 256
        | _SPREAD[word >> 24] << 384
    )


def _tag_head(head: bytes, seq: int) -> bytes:
    return (int.from_bytes(head, "little") & _KEEP | _tag_bits(seq)).to_bytes(HEAD_BYTES, "little")


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


def _xor(data: bytes, key: bytes, offset: int) -> bytes:
    """`data` masked as if it started at byte `offset` of a payload masked with `key`."""
    r = offset % 4
    return unmask(data, key[r:] + key[:r])


class AudioFrames:
    """Masked, tagged `AudioData` frames for many calls, at a few microseconds each.

    Byte for byte the same message as `audio_text(tag(pcm, seq), participant, silent)` (whose
    base64 data comes last), masked with one random key per `AudioFrames` (one per simulator
    process: an unpredictable key, as RFC 6455 asks; only its reuse across this process's
    connections is a shortcut, invisible to a server). What does not depend on the frame number
    (the JSON around the audio, and the base64 after the tagged head, masked) is computed once
    per clip frame and shared by every call, so a frame costs one small tag, one 84-character
    base64, and masking those 84 bytes. The frame header and the masked JSON prefix are cached
    too. The caches grow with the distinct clip frames given: meant for a scenario's clips.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or os.urandom(4)
        self._prefixes: dict[tuple[str | None, bool], bytes] = {}
        self._tails: dict[tuple[bytes, int], bytes] = {}  # base64 after the head, masked
        self._masked: dict[tuple[bytes, int], bytes] = {}  # header, key, masked JSON prefix
        self._plain_tails: dict[bytes, str] = {}  # base64 after the head, as sent
        self._kept_heads: dict[bytes, int] = {}  # the head's bits outside the tag

    def text(self, pcm: bytes, seq: int, participant: str | None, silent: bool) -> str:
        """The message (unmasked), e.g. for a recording."""
        prefix = self._prefix(participant, silent).decode()
        return prefix + pybase64.b64encode_as_string(tag(pcm, seq)) + AUDIO_SUFFIX

    def is_echo(self, data: str, pcm: bytes, seq: int) -> bool:
        """Whether base64 `data` is frame `seq` made of `pcm`, byte for byte. Cheaper than
        building the frame: the base64 after the head is compared in place, the head as one
        integer."""
        if len(pcm) <= HEAD_BYTES:
            return data == pybase64.b64encode_as_string(pcm)
        tail = self._plain_tails.get(pcm)
        if tail is None:
            tail = self._plain_tails[pcm] = pybase64.b64encode_as_string(pcm[HEAD_BYTES:])
            self._kept_heads[pcm] = int.from_bytes(pcm[:HEAD_BYTES], "little") & _KEEP
        if len(data) != _HEAD_B64 + len(tail) or not data.endswith(tail):
            return False
        try:
            head = int.from_bytes(pybase64.b64decode(data[:_HEAD_B64]), "little")
        except ValueError:
            return False
        return head == self._kept_heads[pcm] | _tag_bits(seq)

    def frame(self, pcm: bytes, seq: int, participant: str | None, silent: bool) -> bytes:
        prefix = self._prefix(participant, silent)
        at = len(prefix)
        end = at + _HEAD_B64
        tail = self._tails.get((pcm, end % 4))
        if tail is None:
            tail = self._tails[(pcm, end % 4)] = _xor(
                pybase64.b64encode(pcm[HEAD_BYTES:]) + _SUFFIX, self.key, end
            )
        length = end + len(tail)
        masked_prefix = self._masked.get((prefix, length))
        if masked_prefix is None:
            masked_prefix = self._masked[(prefix, length)] = masked_header(
                OP_TEXT, length, self.key
            ) + _xor(prefix, self.key, 0)
        head = pybase64.b64encode(_tag_head(pcm[:HEAD_BYTES], seq))
        return b"".join((masked_prefix, _xor(head, self.key, at), tail))

    def _prefix(self, participant: str | None, silent: bool) -> bytes:
        prefix = self._prefixes.get((participant, silent))
        if prefix is None:
            prefix = self._prefixes[(participant, silent)] = audio_prefix(
                participant, silent
            ).encode()
        return prefix
