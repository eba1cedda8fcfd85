"""Logging: readable text by default, JSON lines on request; every call's lines carry its ids.

Owns: formatters and the per-call logger adapter. Never: decides what to log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

CALL_FIELDS = ("call_connection_id", "call_correlation_id", "peer")
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

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        connection = getattr(record, "call_connection_id", None)
        if connection is not None:
            correlation = getattr(record, "call_correlation_id", "-")
            peer = getattr(record, "peer", "-")
            line += f" [call={connection} correlation={correlation} peer={peer}]"
        return line if _worker is None else f"{line} [worker={_worker}]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CALL_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
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
