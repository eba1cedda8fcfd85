"""The calls whose media WebSocket this replica holds, and what a callback does to them.

Owns: `LiveCalls`, the registry of held calls by correlation id (a call is in it from its
media WebSocket's accept to its end: `LiveCalls.hold`), and `LiveCall.act`, what each Call
Automation event does to a held call:

- `CallDisconnected`: the call is over at ACS: its media call ends (if still open) as a
  hang-up, whoever's event came first, the socket's close or the callback;
- `MediaStreamingFailed`: the stream is gone: the media call ends the same way;
- `MediaStreamingStarted` / `MediaStreamingStopped`: what `Call.control.media_streaming`
  reports.

Never: I/O, or reaching another replica (`gateway.control.replicas` forwards events to the
replica that holds the call); ending a call is asking: the server's connection closes the
WebSocket when `LiveCall.ending` is set (`gateway.server.connection`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import attrs
import trio

log = logging.getLogger("gateway.control")

ENDING: Final = {
    "CallDisconnected": "the call was disconnected (CallDisconnected)",
    "MediaStreamingFailed": "media streaming failed (MediaStreamingFailed)",
}
STREAMING: Final = {"MediaStreamingStarted": "started", "MediaStreamingStopped": "stopped"}
ACTS: Final = frozenset(ENDING) | frozenset(STREAMING)  # the events a live call must see


def kind_of(event_type: str) -> str:
    """`Microsoft.Communication.CallDisconnected` -> `CallDisconnected`."""
    return event_type.rpartition(".")[2]


@attrs.define(eq=False)
class LiveCall:
    """One call whose media WebSocket is open here. `control` is its `Call.control` (None for
    a call this gateway did not answer)."""

    correlation_id: str
    control: Any = None
    ending: trio.Event = attrs.Factory(trio.Event)  # set: the server closes the WebSocket
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ending.is_set():
            self.reason = reason
            self.ending.set()

    def act(self, kind: str, data: Mapping[str, Any]) -> None:
        """What the event `kind` (with its `data`) does to this call."""
        if kind in STREAMING:
            self._streaming(STREAMING[kind])
        elif kind in ENDING:
            self._streaming("failed" if kind == "MediaStreamingFailed" else "stopped")
            log.info("call %s: %s: ending its media call", self.correlation_id, kind)
            self.end(ENDING[kind])

    def _streaming(self, state: str) -> None:
        if self.control is not None and hasattr(self.control, "media_streaming"):
            self.control.media_streaming = state


class LiveCalls:
    """The calls held here, by correlation id (a reconnected stream replaces the older one)."""

    def __init__(self) -> None:
        self.calls: dict[str, LiveCall] = {}

    def get(self, correlation_id: str) -> LiveCall | None:
        return self.calls.get(correlation_id)

    @contextmanager
    def hold(self, call: LiveCall) -> Iterator[LiveCall]:
        """`call` is held here for the duration of the `with`."""
        self.calls[call.correlation_id] = call
        try:
            yield call
        finally:
            if self.calls.get(call.correlation_id) is call:
                del self.calls[call.correlation_id]

    def act(self, correlation_id: str, kind: str, data: Mapping[str, Any]) -> bool:
        """Apply the event to the call if it is held here; whether it was."""
        call = self.calls.get(correlation_id)
        if call is None:
            return False
        call.act(kind, data)
        return True
