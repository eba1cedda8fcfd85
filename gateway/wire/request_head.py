"""The exact size cap on HTTP/1.1 request heads, whatever way their bytes arrive, sans-IO.

Owns: finding where each request head ends in a connection's bytes (the blank line, as h11
finds it) and refusing a head longer than its cap. Never: parses a head (h11 does), buffers more
than the cap, or does I/O.

h11's `max_incomplete_event_size` is checked only while an event is incomplete, so a head far
over the cap that arrives in one read is parsed whole; this gate sits in front of h11 and sees
every byte first. It assumes heads follow each other with nothing between them (requests
without a body, like probes and scrapes); with `count`, it checks that many heads and lets the
rest pass (a WebSocket upgrade: one head, then frames).
"""

from __future__ import annotations

import re
from typing import Final

_BLANK_LINE: Final = re.compile(b"\n\r?\n")  # the end of a head, as h11 finds it


class HeadTooLarge(Exception):
    """A request head is longer than the cap (HTTP 431)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request head over {limit} bytes")
        self.limit = limit


class RequestHeadLimit:
    """Feed it every byte the peer sends, before h11 sees them: `feed` raises `HeadTooLarge`
    as soon as a head is over `limit` bytes (its blank line included). `count`: how many heads
    to check (None: every one)."""

    __slots__ = ("_head", "count", "heads", "limit")

    def __init__(self, limit: int, *, count: int | None = None) -> None:
        self.limit = limit
        self.count = count
        self._head = bytearray()  # the current head so far: never more than `limit` bytes
        self.heads = 0  # complete heads seen

    @property
    def done(self) -> bool:
        """All `count` heads came: later bytes pass unexamined."""
        return self.heads == self.count

    def feed(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view and not self.done:
            start = max(0, len(self._head) - 2)  # a blank line may straddle two reads
            room = self.limit - len(self._head)
            self._head += view[: room + 1]  # one byte over is enough to know
            end = _end_of_head(self._head, start)
            if end is None or end > self.limit:
                if len(self._head) > self.limit:
                    raise HeadTooLarge(self.limit)
                return
            taken = end - (len(self._head) - min(len(view), room + 1))
            view = view[taken:]
            self._head.clear()
            self.heads += 1


def _end_of_head(buffer: bytearray, start: int) -> int | None:
    """Where the head in `buffer` ends (just past its blank line), or None if not yet."""
    if buffer[:1] == b"\n":  # h11 takes an immediately empty line as a (bad) head on its own
        return 1
    if buffer[:2] == b"\r\n":
        return 2
    match = _BLANK_LINE.search(buffer, start)
    return None if match is None else match.end()
