"""The caller's side of the model's socket: each append event written at once when nothing is
ahead of it, otherwise queued, in order, for the task that sends to the model.

Owns: the order of what goes up from the caller's side (append events; the model told of a
barge-in the local VAD acted on; the rest of a write the kernel took only in part), the bound on
what may wait (`OUTBOX_MS` of audio: the caller's first words wait here while the first session
opens), and counting the frames it drops. Never: whom the model hears or how frames are batched
(`speakers`, `uplink`), the session's life (`bridge`), or what a barge-in tells the model
(`conversation`).

Why write from the caller's task: the task that sends would otherwise wake for every event
(every 40 ms a call); the model's socket, TLS included, can write without waiting
(`ClientWebSocket.send_message_nowait`). An event goes that way only when nothing is queued or
being sent here and nothing is owed on the socket, so it never overtakes anything.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, TypeAlias

import trio

from ...acs.packets import FRAME_MS
from ...call.interface import CallStats
from ...errors import ConnectionClosed
from .sessions import Upstream

OUTBOX_MS: Final = 1000  # the caller's audio that may wait for the model (the first session)

_Outgoing: TypeAlias = tuple[str, int] | Upstream | None
"""Queued: an append event and the ACS frames in it; a session whose socket owes the rest of an
event written at once (to be flushed); or None: the local VAD heard the caller over the bot,
which has been stopped; the model is to be told."""


class Outbox:
    def __init__(self, batch_frames: int, stats: CallStats) -> None:
        slots = max(2, math.ceil(OUTBOX_MS / (FRAME_MS * batch_frames)))
        self._queue, self._queued = trio.open_memory_channel[_Outgoing](slots)
        self._posted = 0  # queued or being sent: nothing may overtake them
        self._overdue_barge_in = False  # a barge-in to tell the model found the queue full
        self.stats = stats

    def append(self, ws: Upstream | None, message: str, frames: int) -> None:
        """An append event of `frames` ACS frames, for the session `ws` (None: the first is
        not open yet). Never waits; a full queue drops it, counted."""
        if ws is not None and not self._posted and ws.send_message_nowait(message):
            if ws.owes():  # the kernel took part: the sender sends the rest before what follows
                self._post(ws)
        else:
            self._post((message, frames))

    def barge_in(self) -> None:
        """The local VAD stopped the bot: the model is to be told, after what is queued."""
        self._post(None)

    def _post(self, item: _Outgoing) -> None:
        try:
            self._queue.send_nowait(item)
            self._posted += 1
        except trio.WouldBlock:  # the model has not taken a second of the caller's audio
            if item is None:
                self._overdue_barge_in = True  # acted on before the next event is sent
            elif type(item) is tuple:
                self.stats.upstream_audio_dropped += item[1]
        except trio.ClosedResourceError:  # the call has ended
            if type(item) is tuple:
                self.stats.upstream_audio_dropped += item[1]

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """ACS hung up: nothing more comes; `send` sends what is queued, then returns."""
        self._queue.close()

    async def send(
        self,
        send_audio: Callable[[str, int], Awaitable[None]],
        tell_interrupted: Callable[[], Awaitable[None]],
    ) -> None:
        """The task that sends to the model: what is queued, in order, until closed."""
        async for item in self._queued:
            if item is None or self._overdue_barge_in:  # the model hears of it once
                self._overdue_barge_in = False
                await tell_interrupted()
            if isinstance(item, tuple):
                await send_audio(*item)
            elif item is not None:
                await _flush(item)
            self._posted -= 1


async def _flush(ws: Upstream) -> None:
    try:
        await ws.flush()
    except ConnectionClosed:
        pass  # the reader sees it
