"""`Connection`: one side of an upgraded WebSocket, sans-IO (after wsproto's).

Owns: the connection's state (one `ConnectionState`) and its three verbs: `receive_data(bytes)`
returns the events those bytes completed, `send(event)` returns the bytes to write, and
`send_texts(texts)` is `send` for a batch of text messages (the audio path). Never: I/O,
clocks, tasks, JSON.

Roles: by default the server side (the client's frames arrive masked, ours go unmasked). With
`client=True` it is the client side (the realtime bridge's connection to the model): every
frame we send is masked with a fresh key, the server's frames must arrive unmasked, we may
send pings (`send(Ping(...))`), and their pongs come back as `Pong` events.

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
from .events import Close, Event, Ping, Pong


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
    __slots__ = ("state", "_reader", "_receive", "_masks")

    def __init__(self, max_message_bytes: int, *, client: bool = False) -> None:
        self.state = _OPEN
        self._reader = framing.FrameReader(max_message_bytes, masked=not client)
        self._receive = self._reader.receive
        self._masks = framing.MaskKeys() if client else None

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

    def send(self, event: Close | Pong | Ping) -> bytes:
        """The bytes of our close frame, of a pong, or (client side) of a ping."""
        state = self.state
        if isinstance(event, Close):
            if state is _OPEN:
                self.state = _LOCAL_CLOSING
            elif state is _REMOTE_CLOSING:
                self.state = _CLOSED
                # echo the peer's code, as RFC 6455 section 5.5.1 asks; 1005 is never sent
                if event.code == CLOSE_NO_STATUS:
                    event = Close(CLOSE_NORMAL)
            else:
                raise LocalProtocolError(f"cannot send a close frame when {state.value}")
            if self._masks is None:
                return framing.encode_close(event.code, event.reason)
            payload = framing.close_payload(event.code, event.reason)
            return framing.masked_frame(framing.OP_CLOSE, payload, self._masks.next())
        kind = "ping" if type(event) is Ping else "pong"
        if state is not _OPEN:
            raise LocalProtocolError(f"cannot send a {kind} when {state.value}")
        if self._masks is None:
            if kind == "ping":
                raise LocalProtocolError("the server side does not ping")
            return framing.encode_pong(event)
        opcode = framing.OP_PING if kind == "ping" else framing.OP_PONG
        return framing.masked_frame(opcode, event, self._masks.next())

    def send_texts(self, texts: list[str]) -> bytes:
        """The frames of several text messages, for one write."""
        if self.state is not _OPEN:
            raise LocalProtocolError(f"cannot send messages when {self.state.value}")
        masks = self._masks
        if masks is None:
            return framing.encode_texts(texts)
        text = framing.OP_TEXT
        return b"".join([framing.masked_frame(text, t.encode(), masks.next()) for t in texts])

    def send_text(self, message: str) -> bytes:
        """The frame of one text message."""
        if self.state is not _OPEN:
            raise LocalProtocolError(f"cannot send messages when {self.state.value}")
        masks = self._masks
        if masks is None:
            return framing.encode_text(message)
        return framing.masked_frame(framing.OP_TEXT, message.encode(), masks.next())

    def end(self) -> None:
        """The connection is over without (the rest of) the close handshake: EOF, a reset, a
        write given up, or no reply to our close frame in time."""
        self.state = _CLOSED
