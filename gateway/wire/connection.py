"""`Connection`: the server side of one upgraded WebSocket, sans-IO (after wsproto's).

Owns: the connection's state (one `ConnectionState`) and its three verbs: `receive_data(bytes)`
returns the events those bytes completed, `send(event)` returns the bytes to write, and
`send_texts(texts)` is `send` for a batch of text messages (the audio path). Never: I/O,
clocks, tasks, JSON.

Rules (RFC 6455 section 7):
- OPEN: messages flow both ways.
- LOCAL_CLOSING: we sent a close frame; we send nothing more and wait for the peer's.
- REMOTE_CLOSING: the peer's close frame came; we owe it ours (`send(Close(...))`), nothing else.
- CLOSED: both close frames went, or the connection was lost (`end()`): nothing more is sent or
  parsed.
A send that the state forbids raises `LocalProtocolError` (the caller's bug); bytes that break
the protocol raise `FramingError` (the peer's fault, with the close code to send).
"""

from __future__ import annotations

import enum

from ..errors import CLOSE_NO_STATUS, CLOSE_NORMAL, LocalProtocolError
from . import framing
from .events import Close, Event, Pong


class ConnectionState(enum.Enum):
    OPEN = "open"
    LOCAL_CLOSING = "local closing"
    REMOTE_CLOSING = "remote closing"
    CLOSED = "closed"


_OPEN = ConnectionState.OPEN
_LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_CLOSED = ConnectionState.CLOSED


class Connection:
    __slots__ = ("state", "_reader", "_receive")

    def __init__(self, max_message_bytes: int) -> None:
        self.state = _OPEN
        self._reader = framing.FrameReader(max_message_bytes)
        self._receive = self._reader.receive

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """The events that `data` (the next bytes from the peer) completed. After the peer's
        close frame nothing more is parsed."""
        state = self.state
        if state is not _OPEN and state is not _LOCAL_CLOSING:
            return []
        events = self._receive(data)
        if events and type(events[-1]) is Close:  # a read ends at a close frame
            self.state = _REMOTE_CLOSING if state is _OPEN else _CLOSED
        return events

    def send(self, event: Close | Pong) -> bytes:
        """The bytes of our close frame or of a pong."""
        state = self.state
        if isinstance(event, Close):
            if state is _OPEN:
                self.state = _LOCAL_CLOSING
            elif state is _REMOTE_CLOSING:
                self.state = _CLOSED
                # echo the peer's code, as RFC 6455 section 5.5.1 asks; 1005 is never sent
                if event.code == CLOSE_NO_STATUS:
                    return framing.encode_close(CLOSE_NORMAL)
            else:
                raise LocalProtocolError(f"cannot send a close frame when {state.value}")
            return framing.encode_close(event.code, event.reason)
        if state is not _OPEN:
            raise LocalProtocolError(f"cannot send a pong when {state.value}")
        return framing.encode_pong(event)

    def send_texts(self, texts: list[str]) -> bytes:
        """The frames of several text messages, for one write."""
        if self.state is not _OPEN:
            raise LocalProtocolError(f"cannot send messages when {self.state.value}")
        return framing.encode_texts(texts)

    def end(self) -> None:
        """The connection is over without (the rest of) the close handshake: EOF, a reset, a
        write given up, or no reply to our close frame in time."""
        self.state = _CLOSED
