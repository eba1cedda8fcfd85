"""`EventLog`: one call's events as JSON lines, on the call's clock, written as the call goes.

Owns: the line format (`{"t": seconds since the call started, "event": kind, ...fields}`, one
object a line, UTF-8) and the batching of lines to the disk thread (with each audio flush, at
least every `FLUSH_INTERVAL` of events, and at the end). Never: touches the disk on the event
loop, or keeps more than `MAX_PENDING_LINES` waiting (later ones are dropped and counted).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import orjson

from .disk import DISK, DiskThread

log = logging.getLogger("gateway.records")

FLUSH_INTERVAL: Final = 1.0
MAX_PENDING_LINES: Final = 10_000  # a stuck disk costs at most about a megabyte per call


class EventLog:
    def __init__(self, path: str, start: float, disk: DiskThread = DISK) -> None:
        self.path = path
        self.start = start
        self.disk = disk
        self.lines: list[bytes] = []
        self.submitted = 0  # lines handed to the disk thread (event loop)
        self.written = 0  # lines the disk thread is done with (disk thread)
        self.dropped = 0
        self.failed: str | None = None  # set by the disk thread
        self.next_flush = start + FLUSH_INTERVAL
        self._fd: int | None = None
        self.closed = False
        disk.submit(self._open)

    def add(self, now: float, event: str, fields: dict[str, Any]) -> None:
        if self.closed:
            return
        if len(self.lines) + self.submitted - self.written >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        line = {"t": round(now - self.start, 4), "event": event}
        line.update(fields)
        self.lines.append(orjson.dumps(line, default=str) + b"\n")
        if now >= self.next_flush:
            self.flush(now)

    def flush(self, now: float) -> None:
        self.next_flush = now + FLUSH_INTERVAL
        if not self.lines or self.closed:
            return
        data, n = b"".join(self.lines), len(self.lines)
        self.lines = []
        self.submitted += n
        self.disk.submit(lambda: self._write(data, n))

    def close(self, now: float) -> None:
        if not self.closed:
            self.flush(now)
            self.closed = True
            self.disk.submit(self._close)

    # -- disk thread --

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o640)
        except OSError as exc:
            self.failed = f"cannot create the event log: {exc}"
            log.warning("event log %s: %s", self.path, self.failed)
            return
        self.disk.open_paths.add(self.path)

    def _write(self, data: bytes, n: int) -> None:
        try:
            if self._fd is not None and self.failed is None:
                os.write(self._fd, data)
        except OSError as exc:
            self.failed = f"write failed: {exc}"
            log.warning("event log %s stopped: %s", self.path, self.failed)
        finally:
            self.written += n

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.disk.open_paths.discard(self.path)
