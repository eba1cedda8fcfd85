"""Logging: readable text by default, JSON lines on request; every call's lines carry its ids.

Owns: formatters, the per-call logger adapter, and log hygiene. Never: decides what to log, or
lets a peer shape a log line.

A peer chooses much of what is logged about it: the `x-ms-call-*` ids that tag every line of
its call (its refusals included, before any token is checked), the paths it asks for, the
reasons it closes with, whatever an error message quotes. So both formats write the call
fields through `peer_text` (at most `MAX_FIELD_CHARS`, and every character outside printable
ASCII, and the text format's separators ` `, `=`, `[`, `]`, escaped as `\\xNN`), and every
message with its control characters escaped (no peer can start a line) and at most
`MAX_MESSAGE_CHARS` long. A line is so a few hundred bytes at most, tracebacks aside.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import orjson

CALL_FIELDS = ("call_connection_id", "call_correlation_id", "peer")
MAX_FIELD_CHARS: Final = 96  # an ACS call id is a 36-character GUID; an address fits too
MAX_MESSAGE_CHARS: Final = 400  # ours are short; the rest is what a peer put in them

# A field value keeps printable ASCII but for the separators; the rest shows as \xNN.
_FIELD_ESCAPES: Final = {
    code: f"\\x{code:02x}"
    for code in range(256)
    if not 0x21 <= code <= 0x7E or chr(code) in ' =[]\\"'
}
# A message keeps its text (non-ASCII letters too) but no character that ends or rewrites a
# line: C0 and C1 controls, DEL, and Unicode's line and paragraph separators.
_MESSAGE_ESCAPES: Final = {
    code: f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def peer_text(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`value` as one token that is safe in a log line: at most `limit` characters, with every
    character outside printable ASCII, and ` `, `=`, `[`, `]`, `"`, `\\`, escaped as `\\xNN`
    (a character above U+00FF as `\\uNNNN`)."""
    text = str(value)
    clean = text[:limit].translate(_FIELD_ESCAPES)
    clean = "".join(c if ord(c) < 256 else f"\\u{ord(c):04x}" for c in clean)
    return _capped(clean, limit, len(text))


def message_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A log message with every control character escaped, at most about `limit` long."""
    return _capped(text[:limit].translate(_MESSAGE_ESCAPES), limit, len(text))


def _capped(clean: str, limit: int, length: int) -> str:
    if len(clean) <= limit and length <= limit:
        return clean
    return f"{clean[:limit]}...({length} chars)"


_worker: int | None = None  # this process's worker index under a supervisor: on every line


def call_logger(
    connection_id: str | None, correlation_id: str | None, peer: str
) -> logging.LoggerAdapter[logging.Logger]:
    """A logger that adds the call's ids (from the handshake headers) to every record."""
    extra = {
        "call_connection_id": connection_id or "-",
        "call_correlation_id": correlation_id or "-",
        "peer": peer,
    }
    return logging.LoggerAdapter(logging.getLogger("gateway.call"), extra)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The call's fields open with " [call=" at the end of the line: no message may.
        record.message = message_text(record.message).replace("[call=", "\\x5bcall=")
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        connection = getattr(record, "call_connection_id", None)
        if connection is not None:
            correlation = peer_text(getattr(record, "call_correlation_id", "-"))
            peer = peer_text(getattr(record, "peer", "-"))
            line += f" [call={peer_text(connection)} correlation={correlation} peer={peer}]"
        return line if _worker is None else f"{line} [worker={_worker}]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message_text(record.getMessage()),
        }
        for name in CALL_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = peer_text(value)
        if _worker is not None:
            entry["worker"] = _worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, fmt: str, *, worker: int | None = None) -> None:
    """Send the gateway's logs to stderr at `level` in `fmt` ("text" or "json"). `worker`: this
    process's worker index, tagged on every line from now on (a later call keeps it)."""
    global _worker
    _worker = _worker if worker is None else worker
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("trio-websocket").setLevel(logging.WARNING)
