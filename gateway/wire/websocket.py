"""The server side of one WebSocket, over any Trio stream: HTTP upgrade (h11) and frames
(`gateway.framing`).

Owns: the upgrade, ping/pong, the close handshake, and the message size cap.
Never: JSON, audio, or tasks of its own. The call's tasks call it directly: one
`receive_messages()` returns every message that one read of the socket completed (batching),
and one `send_messages()` writes a batch with a single `send_all`.

Why not trio-websocket here: it puts a reader task and an internal channel in front of every
message, one more task switch per frame than the call needs, and wsproto's generic frame parser
costs more per frame than the rest of the path (README, "Architecture"). The upgrade is parsed by
h11, the HTTP/1.1 engine under wsproto; trio-websocket remains the client in `gateway.testing`.

Resource handling: the caller owns the stream and closes it; `close()` sends a close frame and
waits briefly for the peer's, within the caller's cancel scope. A write that the peer does not
take within `send_timeout` seconds (it stopped reading) gives up: the connection is then dead
(a frame may be half written), every later send or receive raises `SendTimeout`, and the
caller should abort the stream.
Error handling: a peer that breaks the protocol, resets the socket, or closes raises
`ConnectionClosed` with the close code; nothing else escapes from receive/send.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import attrs
import h11
import trio

from ..errors import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CLOSE_NORMAL
from . import framing

RECEIVE_BYTES: Final = 65536  # one read takes every frame the kernel has for us (batching)
CLOSE_REPLY_TIMEOUT: Final = 2.0  # seconds to wait for the peer's close frame after ours
MAX_REQUEST_BYTES: Final = 16384  # the upgrade request's head; ACS sends well under 4 KB
DEFAULT_SEND_TIMEOUT: Final = 10.0  # seconds one write may wait for the peer to read
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class ConnectionClosed(Exception):
    """The WebSocket is closed: by the peer (its code), by us, or abnormally (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class SendTimeout(ConnectionClosed):
    """A write waited `send_timeout` seconds for a peer that does not read: the connection is
    given up (code 1006: no close frame could be sent)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(CLOSE_ABNORMAL, f"the peer took no data for {seconds:g} s")


@attrs.frozen
class Handshake:
    """The upgrade request: its target (path and query) and headers (names lower-cased)."""

    target: str
    headers: dict[str, str]


@attrs.frozen
class Reject:
    """A handshake refusal: the HTTP status sent instead of 101."""

    status: int
    reason: str


class ServerWebSocket:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_bytes: int,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.send_timeout = send_timeout
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._key = b""
        self._frames = framing.FrameReader(max_message_bytes)
        self._unread = b""  # read from the socket with the upgrade request, not yet parsed
        self._send_lock = trio.StrictFIFOLock()  # pongs (reader) and audio (sender) share it
        self._receiver_active = False  # a task is in receive_messages: only it may read
        self._closer_reading = False  # close() is reading the reply: receive_messages waits
        self._close_sent = False
        self._peer_gone = trio.Event()  # the peer's close frame, EOF, or a reset was seen
        self.closed: ConnectionClosed | None = None  # set once the connection is over
        self._unsent = b""  # written by send_messages_nowait, not yet taken by the kernel
        self.pings_received = 0  # the call's flood gate counts them with the messages

    # -- handshake --

    async def read_handshake(self) -> Handshake:
        """Read the HTTP upgrade request. A request that is not a WebSocket upgrade is answered
        (400 or 426) and raises ConnectionClosed, as does a connection that ends first."""
        request: h11.Request | None = None
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse_http(Reject(exc.error_status_hint, "bad HTTP request"))
                raise self._lost(f"bad HTTP request ({exc})") from None
            if event is h11.NEED_DATA:
                data = await self._receive_some()
                self._http.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise self._lost("EOF during the handshake")
        assert request is not None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        refusal = _check_upgrade(request.method, headers)
        if refusal is not None:
            await self._refuse_http(refusal)
            raise self._lost(refusal.reason)
        self._key = headers["sec-websocket-key"].strip().encode()
        return Handshake(request.target.decode("latin-1"), headers)

    async def accept(self) -> None:
        accept = base64.b64encode(hashlib.sha1(self._key + _ACCEPT_GUID).digest())
        data = self._http.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    (b"upgrade", b"websocket"),
                    (b"connection", b"Upgrade"),
                    (b"sec-websocket-accept", accept),
                ],
            )
        )
        trailing, _ = self._http.trailing_data  # frames sent right behind the request
        # Parsed by receive_messages like any read, so a framing error there closes the call
        # with its code instead of escaping from the handshake.
        self._unread = bytes(trailing)
        await self._send_raw(data or b"")

    async def reject(self, refusal: Reject) -> None:
        await self._refuse_http(refusal)
        self.closed = ConnectionClosed(CLOSE_ABNORMAL, f"rejected with {refusal.status}")

    # -- messages --

    async def receive_messages(self) -> list[bytes | bytearray]:
        """Every complete message from the next read(s). Text messages are UTF-8 `bytes`, binary
        ones `bytearray`. Answers pings itself, one pong for all the pings of one read (RFC 6455
        section 5.5.3 allows answering only the latest), and returns after them even with no
        message (an empty list), so that the caller can count them (`pings_received`)."""
        if self._closer_reading:  # close() is reading the peer's reply: it owns the stream
            await self._peer_gone.wait()
            raise self._closed_error("closed")
        self._receiver_active = True
        messages: list[bytes | bytearray] = []
        pings = self.pings_received
        try:
            while not messages and pings == self.pings_received:
                if self._peer_gone.is_set() and self.closed is not None:
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
                    events = self._frames.receive(data)
                except framing.FramingError as exc:
                    self._receiver_active = False  # we are the reader: close() reads
                    await self.close(exc.code, exc.reason)
                    raise ConnectionClosed(exc.code, exc.reason) from None
                ping = None
                for event in events:
                    kind = type(event)
                    if kind is bytes or kind is bytearray:
                        messages.append(event)  # type: ignore[arg-type]
                    elif kind is framing.Ping:
                        ping = event
                        self.pings_received += 1
                    elif kind is framing.Close:
                        await self._peer_closed(event)  # type: ignore[arg-type]
                        if not messages:
                            raise self._closed_error()
                        return messages
                if ping is not None:
                    await self._send_raw(framing.encode_pong(ping))  # type: ignore[arg-type]
            return messages
        finally:
            self._receiver_active = False

    async def send_messages(self, messages: list[str]) -> None:
        """Send text messages with one write. Raises ConnectionClosed if the peer is gone."""
        if self.closed is not None or self._close_sent:
            raise self._closed_error("closing")
        await self._send_raw(framing.encode_texts(messages))

    def can_send_now(self) -> bool:
        """True if `send_messages_nowait` may write: open, no write in progress or pending."""
        return (
            self.closed is None
            and not self._close_sent
            and not self._unsent
            and not self._send_lock.locked()
            and hasattr(self.stream, "send_nowait")
        )

    def send_messages_nowait(self, messages: list[str]) -> bool:
        """Write now, from a synchronous caller (see `Player`'s direct path); only after
        `can_send_now()`. Returns False if part of the batch is left for the next
        `send_messages` (which the caller must then arrange) instead of True."""
        rest = self.stream.send_nowait(framing.encode_texts(messages))  # type: ignore[attr-defined]
        if rest:
            self._unsent = bytes(rest)
            return False
        return True

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and wait (briefly) for the peer's; never raises.

        If a task is inside `receive_messages`, that task receives the peer's reply and we wait
        for it; otherwise we read it ourselves."""
        if self._close_sent or self._peer_gone.is_set():
            return
        self._close_sent = True
        try:
            await self._send_raw(framing.encode_close(code, reason))
            with trio.move_on_at(trio.current_time() + CLOSE_REPLY_TIMEOUT):
                while not self._peer_gone.is_set():
                    if self._receiver_active:
                        await self._peer_gone.wait()
                        break
                    self._closer_reading = True
                    data = await self._receive_some()
                    if not data:
                        break
                    try:
                        events = self._frames.receive(data)
                    except framing.FramingError:
                        break
                    if any(type(e) is framing.Close for e in events):
                        break
        except ConnectionClosed:
            pass
        finally:
            self._closer_reading = False
            self._peer_gone.set()
            if self.closed is None:
                self.closed = ConnectionClosed(code, reason)

    # -- plumbing --

    async def _peer_closed(self, event: framing.Close) -> None:
        self._peer_gone.set()
        if self.closed is None:
            self.closed = ConnectionClosed(event.code, event.reason)
        if not self._close_sent:  # echo the close, as RFC 6455 asks
            self._close_sent = True
            code = CLOSE_NORMAL if event.code == CLOSE_NO_STATUS else event.code
            try:
                await self._send_raw(framing.encode_close(code))
            except ConnectionClosed:
                pass

    async def _receive_some(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"connection lost ({exc})") from None

    def _lost(self, why: str) -> ConnectionClosed:
        self._peer_gone.set()
        if self.closed is None:
            self.closed = ConnectionClosed(CLOSE_ABNORMAL, why)
        return self._closed_error()

    def _closed_error(self, why: str = "closed") -> ConnectionClosed:
        """A new exception saying how the connection closed. The stored `self.closed` is never
        raised: raising gives it a traceback whose frames hold `self`, a reference cycle that
        kept every ended call's objects (socket buffers included) alive until a full GC."""
        closed = self.closed or ConnectionClosed(CLOSE_ABNORMAL, why)
        fresh = type(closed).__new__(type(closed), *closed.args)  # same type: SendTimeout too
        fresh.__dict__.update(closed.__dict__)
        return fresh

    async def _refuse_http(self, refusal: Reject) -> None:
        body = refusal.reason.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if refusal.status == 426:
            headers.append((b"upgrade", b"websocket"))
        elif refusal.status == 401:  # RFC 9110 section 15.5.2: say which scheme is wanted
            headers.append((b"www-authenticate", b"Bearer"))
        try:
            data = self._http.send(h11.Response(status_code=refusal.status, headers=headers))
            data = (data or b"") + (self._http.send(h11.Data(data=body)) or b"")
            data += self._http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return  # h11 cannot answer in this state (e.g. the request was garbage)
        try:
            await self._send_raw(data)
        except ConnectionClosed:
            pass

    async def _send_raw(self, data: bytes) -> None:
        if self._unsent:  # bytes the direct path could not write go first
            data, self._unsent = self._unsent + data, b""
        lock = self._send_lock
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
        send_nowait = getattr(self.stream, "send_nowait", None)
        if send_nowait is not None:
            # Hot path: the kernel takes the whole write at once, so no timer is needed (a
            # cancel scope costs more than the write itself). Errors surface in send_all below.
            data = send_nowait(data)
            if not data:
                return
        with trio.move_on_at(trio.current_time() + self.send_timeout):
            await self.stream.send_all(data)
            return
        self._peer_gone.set()
        self._close_sent = True  # no close frame can follow a half-written one
        self.closed = SendTimeout(self.send_timeout)
        raise self._closed_error()


def _check_upgrade(method: bytes, headers: dict[str, str]) -> Reject | None:
    """RFC 6455 section 4.2.1: what makes a request a WebSocket upgrade."""
    if method != b"GET":
        return Reject(405, "only GET can upgrade to a WebSocket")
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in {
        token.strip().lower() for token in headers.get("connection", "").split(",")
    }:
        return Reject(426, "this is a WebSocket endpoint; send an upgrade request")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return Reject(426, "unsupported WebSocket version (13 only)")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return Reject(400, "missing or invalid Sec-WebSocket-Key")
    return None
