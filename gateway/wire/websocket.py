"""`ServerWebSocket`: the Trio side of one server WebSocket. It drives the sans-IO handshake
(`gateway.wire.handshake`) and connection (`gateway.wire.connection`) over any Trio stream.

Owns: every read and every write on the stream, and the order they happen in. Never: JSON,
audio, or tasks of its own. The call's tasks call it directly: one `receive_messages()` returns
every message that one read of the socket completed (batching), and one `send_messages()`
writes a batch with a single `send_all`.

Ordering rules (this module is the only place that knows them):
- One reader at a time: `_reading` is True while a task reads the socket. That is
  `receive_messages()`; `close()` reads the peer's close frame itself only when nobody else
  reads, and otherwise waits for the reader to see it. Whoever finds `_reading` set does not
  read (a plain attribute, not a lock: the check and the set are one step, with no checkpoint
  between, and a lock's acquire and release cost more than the rest of a read's bookkeeping).
- One writer at a time: whoever holds `_writing` (the send task's audio, the reader's pongs and
  close echo, `close()`). The player's direct path (`direct_sink()`) writes without waiting,
  and only when no write is in progress or owed; what the kernel did not take then (`_unsent`)
  goes first in the next write. Nothing follows our close frame (the connection refuses).

Why not trio-websocket here: it puts a reader task and an internal channel in front of every
message, one more task switch per frame than the call needs, and wsproto's generic frame parser
costs more per frame than the rest of the path (`bench/pieces.py`). trio-websocket remains the
client in `gateway.testing`.

Resource handling: the caller owns the stream and closes it; `close()` sends a close frame and
waits briefly for the peer's, within the caller's cancel scope. A write that the peer does not
take within `send_timeout` seconds (it stopped reading) gives up: the connection is then dead
(a frame may be half written), every later send or receive raises `SendTimeout`, and the
caller should abort the stream.
Error handling: a peer that breaks the protocol, resets the socket, or closes raises
`ConnectionClosed` with the close code; nothing else escapes from receive/send. `closed` keeps
how the connection ended; what is raised is always a fresh copy of it (see
`ConnectionClosed.fresh`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

import trio

from ..errors import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    BadUpgrade,
    ConnectionClosed,
    FramingError,
    LocalProtocolError,
    SendTimeout,
)
from .connection import Connection, ConnectionState
from .events import BinaryMessage, Close, Message, Ping, Pong, TextMessage
from .handshake import Handshake, Reject, ServerHandshake
from .transport import direct_writes

__all__ = [
    "ConnectionClosed",
    "DirectSink",
    "Handshake",
    "Reject",
    "SendTimeout",
    "ServerWebSocket",
]

RECEIVE_BYTES: Final = 65536  # one read takes every frame the kernel has for us (batching)
CLOSE_REPLY_TIMEOUT: Final = 2.0  # seconds to wait for the peer's close frame after ours
DEFAULT_SEND_TIMEOUT: Final = 10.0  # seconds one write may wait for the peer to read

_OPEN: Final = ConnectionState.OPEN
_LOCAL_CLOSING: Final = ConnectionState.LOCAL_CLOSING
_REMOTE_CLOSING: Final = ConnectionState.REMOTE_CLOSING
_CLOSED: Final = ConnectionState.CLOSED


class MessageCounts(Protocol):
    """Where the direct path counts the messages it wrote (the call's `CallStats`)."""

    messages_out: int
    stop_audio_sent: int


class ServerWebSocket:
    # One per connection, so slots: a call's memory is what limits calls per process.
    __slots__ = (
        "stream",
        "send_timeout",
        "connection",
        "_handshake",
        "_unread",
        "_reading",
        "_writing",
        "_unsent",
        "_ended",
        "_send_nowait",
        "_backlogged",
        "closed",
        "pings_received",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_bytes: int,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_body_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.send_timeout = send_timeout
        self.connection = Connection(max_message_bytes)
        # With max_body_bytes, plain HTTP requests come back from read_handshake (webhooks).
        # None once the 101 went out: the HTTP parser (h11's state, the request's raw headers,
        # ~3 KB) is not kept for the life of the call.
        self._handshake: ServerHandshake | None = ServerHandshake(max_body_bytes)
        self._unread: bytes | bytearray = b""  # came with the upgrade request, not yet parsed
        self._reading = False  # a task is reading the socket: only it may (see above)
        self._writing = trio.StrictFIFOLock()
        self._unsent = b""  # written by the direct path, not yet taken by the kernel
        self._ended = trio.Event()  # the connection reached CLOSED: close() may stop waiting
        # A stream that can write without waiting (SocketTransport): the hot path uses it.
        # TLS (gateway.wire.tls): bytes the direct path encrypted that the kernel has not taken
        # yet are the stream's backlog, not `_unsent`, and the next write must send them.
        self._send_nowait, self._backlogged = direct_writes(stream)
        self.closed: ConnectionClosed | None = None  # how the connection ended, once it has
        self.pings_received = 0  # the call's flood gate counts them with the messages

    # -- handshake --

    async def read_handshake(self) -> Handshake:
        """Read the HTTP upgrade request. A request that is not a WebSocket upgrade is answered
        (400 or 426) and raises ConnectionClosed, as does a connection that ends first."""
        handshake = self._handshake
        if handshake is None:
            raise RuntimeError("the handshake is over: the connection was accepted")
        while True:
            try:
                request = handshake.next_request()
            except BadUpgrade as exc:
                await self._refuse(Reject(exc.http_status, exc.reason))
                raise self._lost(str(exc)) from None
            except ConnectionClosed as exc:
                raise self._lost(exc.reason) from None
            if request is not None:
                return request
            handshake.receive_data(await self._receive_some())

    async def accept(self) -> None:
        handshake, self._handshake = self._handshake, None
        if handshake is None:
            raise RuntimeError("the connection was accepted already")
        data, trailing = handshake.accept()
        # Frames sent right behind the request are parsed by receive_messages like any read,
        # so a framing error there closes the call with its code instead of escaping from the
        # handshake.
        self._unread = trailing
        await self._send_raw(data)

    async def respond(
        self, status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer a plain HTTP request (`Handshake.upgrade` false); the connection then ends."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        handshake = self._handshake
        # After the 101 there is no HTTP response to send (h11 refused one then, too).
        data = (
            b""
            if handshake is None
            else handshake.respond(status, body, headers, content_type.encode("latin-1"))
        )
        try:
            if data:
                await self._send_raw(data)
        except ConnectionClosed:
            pass  # the peer left without its answer: nothing else to do
        self.connection.end()
        self._ended.set()
        self.closed = ConnectionClosed(CLOSE_NORMAL, f"answered HTTP {status}")

    async def reject(self, refusal: Reject) -> None:
        await self._refuse(refusal)
        self.connection.end()
        self._ended.set()
        self.closed = ConnectionClosed(CLOSE_ABNORMAL, f"rejected with {refusal.status}")

    # -- messages --

    async def receive_messages(self) -> list[Message]:
        """Every complete message from the next read(s). Answers pings itself, one pong for
        all the pings of one read (RFC 6455 section 5.5.3 allows answering only the latest),
        and returns after them even with no message (an empty list), so that the caller can
        count them (`pings_received`)."""
        if self._reading:  # close() is reading the peer's reply
            await self._ended.wait()
            raise self._closed_error()
        self._reading = True
        connection = self.connection
        messages: list[Message] = []
        pings = self.pings_received
        failure = None  # (close code, reason) of a framing error
        try:
            while not messages and pings == self.pings_received:
                if connection.state is _CLOSED or connection.state is _REMOTE_CLOSING:
                    raise self._closed_error()
                data, self._unread = self._unread, b""
                if not data:
                    try:  # hot path: the stream call is inline, not behind a helper
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise self._lost(f"connection lost ({exc})") from None
                    if not data:
                        raise self._lost("connection lost (EOF)")
                try:
                    events = connection.receive_data(data)
                except FramingError as exc:
                    failure = exc.close_code, exc.reason
                    messages += [  # whole messages before the violation still count
                        event
                        for event in exc.events
                        if type(event) is TextMessage or type(event) is BinaryMessage
                    ]
                    break
                ping = None
                for event in events:
                    if type(event) is TextMessage or type(event) is BinaryMessage:
                        messages.append(event)
                    elif type(event) is Ping:
                        ping = event
                        self.pings_received += 1
                    elif type(event) is Close:
                        await self._peer_closed(event)
                        if not messages:
                            raise self._closed_error()
                        return messages
                if ping is not None and connection.state is _OPEN:
                    await self._send_raw(connection.send(Pong(ping)))
        finally:
            self._reading = False
        if failure is None:
            return messages
        await self.close(*failure)  # we no longer read: close() reads the reply
        if messages:
            return messages  # the next call raises
        raise ConnectionClosed(*failure)

    async def send_messages(self, messages: list[str]) -> None:
        """Send text messages with one write. Raises ConnectionClosed if the peer is gone."""
        try:
            data = self.connection.send_texts(messages)
        except LocalProtocolError:  # we or the peer began closing: no message may follow
            raise self._closed_error("closing") from None
        await self._send_raw(data)

    def direct_sink(
        self, encode: Callable[[bytes], str], stop: str, counts: MessageCounts
    ) -> DirectSink | None:
        """A writer for the player's direct path: each frame is `encode(frame)`, stop-audio is
        the message `stop`, and every message it writes is counted in `counts`. None if the
        stream cannot write without waiting (then the send task writes everything)."""
        if self._send_nowait is None:
            return None
        return DirectSink(self, self._send_nowait, encode, stop, counts)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and wait (briefly) for the peer's; never raises."""
        connection = self.connection
        if connection.state is not _OPEN:
            return
        try:
            await self._send_raw(connection.send(Close(code, reason)))
            with trio.move_on_at(trio.current_time() + CLOSE_REPLY_TIMEOUT):
                if self._reading:  # the reader will see the reply
                    await self._ended.wait()
                else:
                    self._reading = True
                    try:
                        await self._read_close_reply()
                    finally:
                        self._reading = False
        except ConnectionClosed:
            pass
        finally:
            self._finish(ConnectionClosed(code, reason))

    # -- plumbing --

    async def _read_close_reply(self) -> None:
        """Read until the peer's close frame or EOF; messages are dropped. Only while
        `_reading` is ours."""
        connection = self.connection
        while connection.state is _LOCAL_CLOSING:
            data = self._unread or await self._receive_some()
            self._unread = b""
            if not data:
                return
            try:
                connection.receive_data(data)
            except FramingError:
                return

    async def _peer_closed(self, event: Close) -> None:
        if self.closed is None:
            self.closed = ConnectionClosed(event.code, event.reason)
        # Echo the close, as RFC 6455 asks, unless it answers ours.
        echo = (
            self.connection.send(Close(event.code))
            if self.connection.state is _REMOTE_CLOSING
            else b""
        )
        self._ended.set()
        if echo:
            try:
                await self._send_raw(echo)
            except ConnectionClosed:
                pass

    def _finish(self, closed: ConnectionClosed) -> None:
        """The connection is over: keep how it ended (the first word wins)."""
        self.connection.end()
        if self.closed is None:
            self.closed = closed
        self._ended.set()

    async def _receive_some(self) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"connection lost ({exc})") from None

    def _lost(self, why: str) -> ConnectionClosed:
        self._finish(ConnectionClosed(CLOSE_ABNORMAL, why))
        return self._closed_error()

    def _closed_error(self, why: str = "closed") -> ConnectionClosed:
        closed = self.closed
        return ConnectionClosed(CLOSE_ABNORMAL, why) if closed is None else closed.fresh()

    async def _refuse(self, refusal: Reject) -> None:
        handshake = self._handshake
        data = b"" if handshake is None else handshake.reject(refusal)
        if data:
            try:
                await self._send_raw(data)
            except ConnectionClosed:
                pass

    async def _send_raw(self, data: bytes) -> None:
        if self._unsent:  # bytes the direct path could not write go first
            data, self._unsent = self._unsent + data, b""
        lock = self._writing
        try:
            if lock.locked():
                async with lock:
                    await self._send_within_timeout(data)
            else:  # uncontended, the usual case: skip the lock's extra checkpoint
                lock.acquire_nowait()
                try:
                    await self._send_within_timeout(data)
                finally:
                    lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"connection lost ({exc})") from None

    async def _send_within_timeout(self, data: bytes) -> None:
        if isinstance(self.closed, SendTimeout):
            raise self._closed_error()
        send_nowait = self._send_nowait
        if send_nowait is not None:
            # Hot path: the kernel takes the whole write at once, so no timer is needed (a
            # cancel scope costs more than the write itself). Errors surface in send_all below.
            data = send_nowait(data)
            if not data and not self._backlogged():
                return
        with trio.move_on_at(trio.current_time() + self.send_timeout):
            await self.stream.send_all(data)
            return
        # No close frame can follow a half-written frame: the connection is over.
        self.connection.end()
        self._ended.set()
        self.closed = SendTimeout(self.send_timeout)
        raise self._closed_error()


class DirectSink:
    """The player's direct path to the socket (see `Player`): audio frames and stop-audio,
    written from the processor's task (or the pacer's) without waiting, in order with
    everything else this socket writes."""

    __slots__ = ("_ws", "_connection", "_send_nowait", "_encode", "_stop", "_counts")

    def __init__(
        self,
        ws: ServerWebSocket,
        send_nowait: Callable[[bytes], bytes],
        encode: Callable[[bytes], str],
        stop: str,
        counts: MessageCounts,
    ) -> None:
        self._ws = ws
        self._connection = ws.connection
        self._send_nowait = send_nowait
        self._encode = encode
        self._stop = stop
        self._counts = counts

    def ready(self) -> bool:
        """True if a write now would neither wait nor overtake anything: the connection is
        open, no write is in progress, and none is owed."""
        ws = self._ws
        return (
            self._connection.state is _OPEN
            and not ws._unsent
            and not ws._writing.locked()
            and not ws._backlogged()
        )

    def send(self, frames: list[bytes]) -> bool:
        """Write the frames now (only right after `ready()`); False if some bytes were left
        for the next write, which sends them first."""
        self._counts.messages_out += len(frames)
        encode = self._encode
        return self._write(self._connection.send_texts([encode(pcm) for pcm in frames]))

    def send_stop(self) -> bool:
        """Write stop-audio now (only right after `ready()`); False as for `send`."""
        counts = self._counts
        counts.messages_out += 1
        counts.stop_audio_sent += 1
        return self._write(self._connection.send_texts([self._stop]))

    def _write(self, data: bytes) -> bool:
        rest = self._send_nowait(data)
        if rest:
            self._ws._unsent = bytes(rest)
            return False
        return not self._ws._backlogged()
