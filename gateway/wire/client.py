"""`ClientWebSocket`: the Trio side of one client WebSocket (the realtime bridge's connection to
the model). It drives the sans-IO client handshake (`gateway.wire.client_handshake`) and a
client-role `Connection` (masked frames out, unmasked frames in) over any Trio stream.

Owns: every read and every write on the stream once `connect()` has opened it. Never: TCP, TLS
or URLs (the caller opens the stream: plain, or `gateway.wire.tls.TLSStream`), JSON, or tasks of
its own.

Why not trio-websocket: it puts a reader task and a channel in front of every message, so each
model event made a task hop before the bridge saw it. Here the task that calls `get_message()`
reads the socket itself; one read returns every message it completed, which later calls take
without reading again.

Ordering rules:
- One reader: the task that calls `get_message()`. It also answers pings, and it is what sees
  the pong `ping()` waits for, so `ping()` needs that task to be reading. `aclose()` reads the
  peer's close frame itself only when nobody else reads; otherwise it waits for the reader.
- Writers take turns (`_writing`): messages, pings, pongs, the close frame.
  `send_message_nowait` writes only when no write is in progress or owed, and what the kernel
  did not take of it (`_unsent`, or the TLS stream's backlog) goes first in the next write.

Errors: a peer that breaks the protocol, resets the socket, closes or stops answering raises
`ConnectionClosed` (with the close code, 1006 when there was no close frame) from
`get_message`, `send_message` and `ping`; a refused upgrade raises `UpgradeRefused` (with the
HTTP status) from `connect`. The caller owns the stream's life: `aclose()` closes it after the
closing handshake, `abort()` at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

import trio

from ..errors import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    ConnectionClosed,
    FramingError,
    LocalProtocolError,
)
from .client_handshake import UpgradeRefused, parse_upgrade_response, upgrade_request
from .connection import Connection, ConnectionState
from .events import BinaryMessage, Close, Ping, Pong, TextMessage
from .transport import direct_writes

__all__ = ["ClientWebSocket", "ConnectionClosed", "UpgradeRefused", "connect"]

RECEIVE_BYTES: Final = 65536

_OPEN: Final = ConnectionState.OPEN
_LOCAL_CLOSING: Final = ConnectionState.LOCAL_CLOSING


async def connect(
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    max_message_bytes: int,
) -> ClientWebSocket:
    """Send the upgrade request over `stream` and read the answer: the open WebSocket. Raises
    `UpgradeRefused` or `ConnectionClosed` (the stream failed or ended first); the caller
    bounds the time and closes the stream on failure."""
    request, accept = upgrade_request(host, resource, headers)
    buffer = bytearray()
    try:
        await stream.send_all(request)
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise ConnectionClosed(CLOSE_ABNORMAL, "EOF during the upgrade")
            buffer += data
            used = parse_upgrade_response(buffer, accept)
            if used is not None:
                return ClientWebSocket(stream, max_message_bytes, bytes(buffer[used:]))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        why = f"connection lost during the upgrade ({exc})"
        raise ConnectionClosed(CLOSE_ABNORMAL, why) from None


class ClientWebSocket:
    def __init__(self, stream: trio.abc.Stream, max_message_bytes: int, unread: bytes = b""):
        self.stream = stream
        self.connection = Connection(max_message_bytes, client=True)
        self._unread: bytes | bytearray = unread  # frames that came with the 101
        self._messages: deque[bytes] = deque()  # completed by the last read, not yet taken
        self._reading = False
        self._writing = trio.StrictFIFOLock()
        self._unsent = b""  # the end of a `send_message_nowait` the kernel did not take
        self._write_nowait, self._backlogged = direct_writes(stream)
        self._pings = 0
        self._pongs: dict[bytes, trio.Event] = {}  # ping payload -> its waiter, oldest first
        self._ended = trio.Event()  # the connection is over: waiters stop waiting
        self.closed: ConnectionClosed | None = None  # how the connection ended, once it has

    async def get_message(self) -> bytes:
        """The next message's payload (a text message's UTF-8 bytes, or a binary one's)."""
        messages = self._messages
        while not messages:
            await self._read()
        return messages.popleft()

    async def send_message(self, message: str) -> None:
        try:
            data = self.connection.send_text(message)
        except LocalProtocolError:  # we or the peer began closing: no message may follow
            raise self._closed_error() from None
        await self._send(data)

    def send_message_nowait(self, message: str) -> bool:
        """Write a message now, without waiting, if that overtakes nothing. True: it is taken,
        though part of it may be owed (`owes()`) to the next write, which sends that first.
        False: nothing was sent (a write is in progress or owed, the stream cannot write
        without waiting, or the connection is not open); `send_message` sends it."""
        write = self._write_nowait
        if (
            write is None
            or self.connection.state is not _OPEN
            or self._writing.locked()
            or self.owes()
        ):
            return False
        data = self.connection.send_text(message)
        rest = write(data)
        if len(rest) == len(data):
            return False
        self._unsent = bytes(rest)
        return True

    def owes(self) -> bool:
        """Bytes of a message already taken wait for the next write (`flush()` sends them)."""
        return bool(self._unsent) or self._backlogged()

    async def flush(self) -> None:
        """Send what `send_message_nowait` left owed, if anything."""
        await self._send(b"")

    async def ping(self) -> None:
        """Send a ping and wait for its pong (or a later one's), which the reading task sees."""
        self._pings += 1
        payload = self._pings.to_bytes(4, "big")
        try:
            data = self.connection.send(Ping(payload))
        except LocalProtocolError:
            raise self._closed_error() from None
        answered = self._pongs[payload] = trio.Event()
        try:
            await self._send(data)
            await answered.wait()
        finally:
            self._pongs.pop(payload, None)
        if self.closed is not None:
            raise self._closed_error()

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """The closing handshake: our close frame, then the peer's (read by the reading task,
        or here if none), then the stream is closed. Never raises ConnectionClosed."""
        try:
            if self.connection.state is _OPEN:
                await self._send(self.connection.send(Close(code, reason)))
                if self._reading:
                    await self._ended.wait()
                else:
                    await self._read_close_reply()
        except ConnectionClosed:
            pass
        finally:
            await self.abort(ConnectionClosed(code, reason))

    async def abort(self, closed: ConnectionClosed | None = None) -> None:
        """Close the stream now, without (the rest of) the closing handshake."""
        self._finish(closed or ConnectionClosed(CLOSE_ABNORMAL, "aborted"))
        await trio.aclose_forcefully(self.stream)

    # -- plumbing --

    async def _read(self) -> None:
        """One read of the socket: its messages queued, its control frames acted on."""
        if self._reading:  # aclose() is reading the peer's close frame
            await self._ended.wait()
        connection = self.connection
        if connection.state is not _OPEN and connection.state is not _LOCAL_CLOSING:
            raise self._closed_error()
        self._reading = True
        try:
            data, self._unread = self._unread, b""
            if not data:
                data = await self._receive_some()
            events = connection.receive_data(data)
        except FramingError as exc:  # the peer broke the protocol: tell it why, then give up
            failure: FramingError | None = exc
        else:
            failure = None
        finally:
            self._reading = False
        if failure is not None:
            for event in failure.events:  # messages that came whole before the violation
                if type(event) is TextMessage or type(event) is BinaryMessage:
                    self._messages.append(event.data)
            await self._fail(failure.close_code, failure.reason)
            if not self._messages:
                raise self._closed_error()
            return  # get_message() returns them; the next read raises
        ping = None
        for event in events:
            if type(event) is TextMessage or type(event) is BinaryMessage:
                self._messages.append(event.data)
            elif type(event) is Ping:
                ping = event
            elif type(event) is Pong:
                self._answered(bytes(event))
            elif type(event) is Close:
                await self._peer_closed(event)
        if ping is not None and connection.state is _OPEN:  # one pong answers a read's pings
            await self._send(connection.send(Pong(ping)))

    def _answered(self, payload: bytes) -> None:
        """A pong answers its ping and every older one."""
        if payload not in self._pongs:
            return
        for sent, waiter in list(self._pongs.items()):
            waiter.set()
            if sent == payload:
                break

    async def _read_close_reply(self) -> None:
        connection = self.connection
        self._reading = True
        try:
            while connection.state is _LOCAL_CLOSING:
                data, self._unread = self._unread or await self._receive_some(), b""
                connection.receive_data(data)
        except FramingError:
            pass
        finally:
            self._reading = False

    async def _peer_closed(self, event: Close) -> None:
        if self.closed is None:
            self.closed = ConnectionClosed(event.code, event.reason)
        if self.connection.state is ConnectionState.REMOTE_CLOSING:  # not an answer to ours
            try:
                await self._send(self.connection.send(Close(event.code)))
            except ConnectionClosed:
                pass
        self._finish(self.closed)

    async def _fail(self, code: int, reason: str) -> None:
        self.closed = ConnectionClosed(code, reason)
        try:
            await self._send(self.connection.send(Close(code, reason)))
        except (ConnectionClosed, LocalProtocolError):
            pass
        self._finish(self.closed)

    def _finish(self, closed: ConnectionClosed) -> None:
        """The connection is over: keep how it ended (the first word wins); wake the waiters."""
        self.connection.end()
        if self.closed is None:
            self.closed = closed
        self._ended.set()
        for waiter in self._pongs.values():
            waiter.set()

    async def _receive_some(self) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"connection lost ({exc})") from None
        if not data:
            raise self._lost("connection lost (EOF)")
        return data

    async def _send(self, data: bytes) -> None:
        lock = self._writing
        try:
            if lock.locked():
                async with lock:
                    await self._send_all(data)
            else:  # uncontended, the usual case: skip the lock's extra checkpoint
                lock.acquire_nowait()
                try:
                    await self._send_all(data)
                finally:
                    lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"connection lost ({exc})") from None

    async def _send_all(self, data: bytes) -> None:
        """One write, holding `_writing`: what is owed first (a TLS backlog the stream sends
        itself, ahead of anything it is given)."""
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        await self.stream.send_all(data)

    def _lost(self, why: str) -> ConnectionClosed:
        self._finish(ConnectionClosed(CLOSE_ABNORMAL, why))
        return self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        closed = self.closed
        return ConnectionClosed(CLOSE_ABNORMAL, "closed") if closed is None else closed.fresh()
