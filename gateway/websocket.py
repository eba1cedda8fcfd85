"""A thin server-side WebSocket over any Trio stream, on wsproto (the sans-IO engine).

Owns: the HTTP upgrade, framing, ping/pong, the close handshake, and the message size cap.
Never: JSON, audio, or tasks of its own. The call's tasks call it directly: one
`receive_messages()` returns every message that one read of the socket completed (batching),
and one `send_messages()` writes a batch with a single `send_all`.

Why not trio-websocket here: it puts a reader task and an internal channel in front of every
message, one more task switch per frame than the call needs; measured in ../shared/perf-notes.md
and in the README ("Architecture"). trio-websocket remains the client in `gateway.testing`.

Resource handling: the caller owns the stream and closes it; `close()` sends a close frame and
waits briefly for the peer's, within the caller's cancel scope.
Error handling: a peer that breaks the protocol, resets the socket, or closes raises
`ConnectionClosed` with the close code; nothing else escapes from receive/send.
"""

from __future__ import annotations

import contextlib
from typing import Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .errors import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL

RECEIVE_BYTES: Final = 65536  # one read takes every frame the kernel has for us (batching)
CLOSE_REPLY_TIMEOUT: Final = 2.0  # seconds to wait for the peer's close frame after ours
ABNORMAL_CLOSURE: Final = 1006  # RFC 6455: no close frame (reset, EOF)


class ConnectionClosed(Exception):
    """The WebSocket is closed: by the peer (its code), by us, or abnormally (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


@attrs.frozen
class Handshake:
    """The upgrade request: its target (path and query) and headers (names lower-cased)."""

    target: str
    headers: dict[str, str]
    subprotocols: tuple[str, ...]


@attrs.frozen
class Reject:
    """A handshake refusal: the HTTP status sent instead of 101."""

    status: int
    reason: str


class ServerWebSocket:
    def __init__(self, stream: trio.abc.Stream, *, max_message_bytes: int) -> None:
        self.stream = stream
        self.max_message_bytes = max_message_bytes
        self._ws = WSConnection(ConnectionType.SERVER)
        self._send_lock = trio.StrictFIFOLock()  # pongs (reader) and audio (sender) share it
        self._parts: list[str | bytes] = []  # fragments of the message being received
        self._part_bytes = 0
        self._reading = False  # a task is inside receive_some: close() must not read too
        self._close_sent = False
        self._peer_gone = trio.Event()  # the peer's close frame, EOF, or a reset was seen
        self.closed: ConnectionClosed | None = None  # set once the connection is over

    # -- handshake --

    async def read_handshake(self) -> Handshake:
        """Read the HTTP upgrade request. Raises ConnectionClosed if none arrives intact."""
        while True:
            for event in self._ws.events():
                if isinstance(event, Request):
                    headers = {
                        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
                        for k, v in event.extra_headers
                    }
                    return Handshake(event.target, headers, tuple(event.subprotocols))
            await self._receive_into_engine()

    async def accept(self) -> None:
        await self._send_raw(self._ws.send(AcceptConnection()))

    async def reject(self, refusal: Reject) -> None:
        body = refusal.reason.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        data = self._ws.send(
            RejectConnection(status_code=refusal.status, headers=headers, has_body=True)
        )
        data += self._ws.send(RejectData(data=body, body_finished=True))
        await self._send_raw(data)
        self.closed = ConnectionClosed(ABNORMAL_CLOSURE, f"rejected with {refusal.status}")

    # -- messages --

    async def receive_messages(self) -> list[str | bytes]:
        """Every complete message from the next read(s); at least one. Answers pings itself."""
        messages: list[str | bytes] = []
        while not messages:
            if self._peer_gone.is_set() and self.closed is not None:
                raise self.closed
            for event in self._ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self._part_bytes += len(event.data)
                    if self._part_bytes > self.max_message_bytes:
                        await self.close(CLOSE_MESSAGE_TOO_BIG, "message too big")
                        raise ConnectionClosed(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    if event.message_finished and not self._parts:
                        messages.append(event.data)
                        self._part_bytes = 0
                    else:
                        self._parts.append(event.data)
                        if event.message_finished:
                            messages.append(_join(self._parts))
                            self._parts = []
                            self._part_bytes = 0
                elif isinstance(event, Ping):
                    await self._send_raw(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._peer_gone.set()
                    if self.closed is None:
                        self.closed = ConnectionClosed(event.code, event.reason or "")
                    try:
                        await self._send_raw(self._ws.send(event.response()))
                    except (ConnectionClosed, LocalProtocolError):
                        pass  # the peer is already gone (1006) or we were closing
                    if not messages:
                        raise self.closed
                    return messages
            if not messages:
                await self._receive_into_engine()
        return messages

    async def send_messages(self, messages: list[str]) -> None:
        """Send text messages with one write. Raises ConnectionClosed if the peer is gone."""
        if self.closed is not None or self._close_sent:
            raise self.closed or ConnectionClosed(ABNORMAL_CLOSURE, "closing")
        ws_send = self._ws.send
        try:
            data = b"".join([ws_send(TextMessage(data=m)) for m in messages])
        except LocalProtocolError:  # closing: wsproto refuses data frames
            raise ConnectionClosed(ABNORMAL_CLOSURE, "closing") from None
        await self._send_raw(data)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and wait (briefly) for the peer's; never raises.

        If another task is reading, that task receives the peer's reply and we wait for it;
        otherwise we read it ourselves."""
        if self._close_sent or self._peer_gone.is_set():
            return
        self._close_sent = True
        try:
            await self._send_raw(self._ws.send(CloseConnection(code=code, reason=reason)))
            with trio.move_on_at(trio.current_time() + CLOSE_REPLY_TIMEOUT):
                while not self._peer_gone.is_set():
                    if self._reading:
                        await self._peer_gone.wait()
                    else:
                        await self._receive_into_engine()
                        for event in self._ws.events():
                            if isinstance(event, CloseConnection):
                                self._peer_gone.set()
        except (ConnectionClosed, LocalProtocolError):
            pass
        finally:
            if self.closed is None:
                self.closed = ConnectionClosed(code, reason)

    # -- plumbing --

    async def _receive_into_engine(self) -> None:
        self._reading = True
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._peer_gone.set()
            self.closed = self.closed or ConnectionClosed(ABNORMAL_CLOSURE, f"lost ({exc})")
            raise self.closed from None
        finally:
            self._reading = False
        if not data:
            self._peer_gone.set()
            if self._ws.state is ConnectionState.CONNECTING:
                self.closed = ConnectionClosed(ABNORMAL_CLOSURE, "EOF during the handshake")
                raise self.closed
            self._ws.receive_data(None)  # wsproto reports CloseConnection(1006)
            return
        try:
            self._ws.receive_data(data)
        except RemoteProtocolError as exc:  # not a (valid) WebSocket upgrade request
            self.closed = ConnectionClosed(1002, f"bad handshake ({exc})")
            if isinstance(exc.event_hint, RejectConnection):
                with contextlib.suppress(ConnectionClosed, LocalProtocolError):
                    await self._send_raw(self._ws.send(exc.event_hint))
            raise self.closed from None

    async def _send_raw(self, data: bytes) -> None:
        if not data:
            return
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._peer_gone.set()
            self.closed = self.closed or ConnectionClosed(ABNORMAL_CLOSURE, f"lost ({exc})")
            raise self.closed from None


def _join(parts: list[str | bytes]) -> str | bytes:
    if isinstance(parts[0], str):
        return "".join(parts)  # type: ignore[arg-type]
    return b"".join(parts)  # type: ignore[arg-type]
