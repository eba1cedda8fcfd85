"""The health port's lobby: new connections that would take another's place, waiting to speak.

Owns: a few just-accepted connections that could only be served in another connection's place
(their address holds its share, or the endpoint is full) and had sent nothing when accepted. Each
waits here, with no task and no parser of its own, for at most `HealthLimits.lobby_wait`: one
whose request arrives is handed back to be served; the rest are refused with a reset. Never:
reads a connection's bytes (they stay for whoever serves it), or holds more than `LOBBY_SIZE`
(the newcomer pushes the oldest out).

Why: a prober may be accepted a moment before its request arrives. Refusing every silent
newcomer at once would fail such a probe now and then; letting each evict another would hand a
reconnect storm its cost back (a task per attempt, and a dropped connection that reconnects at
once). The lobby costs the storm an ioctl per poll and a close per connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from ..wire.sockets import bytes_waiting, refuse_at_once

LOBBY_SIZE: Final = 64  # connections waiting at once; the next pushes the oldest out
LOBBY_POLL: Final = 0.005  # seconds between looks at the waiting connections

Admit = Callable[[trio.abc.Stream, str], None]  # serve a connection whose request arrived


class Lobby:
    """`park` silent newcomers; `run` hands those that speak to `admit` and refuses the rest."""

    def __init__(self, wait: float, size: int = LOBBY_SIZE) -> None:
        self.size = size
        self.wait = wait
        self.waiting: deque[tuple[trio.abc.Stream, str, float]] = deque()
        self.refused = 0  # pushed out or never spoke
        self._arrived = trio.Event()

    def park(self, stream: trio.abc.Stream, source: str) -> None:
        if len(self.waiting) >= self.size:
            refuse_at_once(self.waiting.popleft()[0])
            self.refused += 1
        self.waiting.append((stream, source, trio.current_time() + self.wait))
        self._arrived.set()

    async def run(self, admit: Admit) -> None:
        """Until cancelled (then every waiting connection is refused)."""
        try:
            while True:
                await self._arrived.wait()
                await trio.sleep(LOBBY_POLL)
                now = trio.current_time()
                still: deque[tuple[trio.abc.Stream, str, float]] = deque()
                for stream, source, deadline in self.waiting:
                    if bytes_waiting(stream) != 0:
                        admit(stream, source)
                    elif now >= deadline:
                        refuse_at_once(stream)
                        self.refused += 1
                    else:
                        still.append((stream, source, deadline))
                self.waiting = still
                if not still:
                    self._arrived = trio.Event()
        finally:
            for stream, _, _ in self.waiting:
                refuse_at_once(stream)
            self.waiting.clear()
