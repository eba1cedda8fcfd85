"""The client side of the HTTP/1.1 upgrade that opens a WebSocket, sans-IO.

Owns: the upgrade request (any extra headers: ACS's call ids, a model's `api-key` or
`Authorization`) and the check of its answer: status 101, `Upgrade: websocket`,
`Connection: upgrade` and the `Sec-WebSocket-Accept` that matches our key (RFC 6455 section
4.1). Never: I/O, clocks, URLs, TLS.

A refusal (any other status) or a wrong answer raises `UpgradeRefused` with the HTTP status
(0 when the answer is not HTTP at all, or its head is over `MAX_RESPONSE_HEAD`). The bytes
after the 101's head are the server's first frames; the caller parses them as such.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Final

from .handshake import accept_key

MAX_RESPONSE_HEAD: Final = 16384


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than a valid 101."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"upgrade refused: {status} {detail}".strip())
        self.status = status
        self.detail = detail


def upgrade_request(
    host: str, resource: str, headers: Sequence[tuple[str, str]], key: bytes | None = None
) -> tuple[bytes, bytes]:
    """The HTTP upgrade request, and the `Sec-WebSocket-Accept` value to expect. `key`
    (base64 of 16 bytes) is random unless given, e.g. for byte-reproducible requests."""
    key = key or base64.b64encode(os.urandom(16))
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r}: line breaks would split the request")
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept_key(key)


def parse_upgrade_response(buffer: bytearray, accept: bytes) -> int | None:
    """Bytes of `buffer` taken by a complete 101 response, or None while the head is
    incomplete. Raises `UpgradeRefused` for any other status or a wrong answer."""
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
    if fields.get("upgrade", "").lower() != "websocket" or "upgrade" not in {
        token.strip().lower() for token in fields.get("connection", "").split(",")
    }:
        raise UpgradeRefused(101, "not an upgrade to websocket")
    if fields.get("sec-websocket-accept", "").encode() != accept:
        raise UpgradeRefused(101, "wrong Sec-WebSocket-Accept")
    return end + 4
