"""The HTTP/1.1 upgrade that opens a server WebSocket, sans-IO (h11 parses the request).

Owns: reading the upgrade request into a `Handshake`, the RFC 6455 section 4.2.1 checks, and
the bytes of the 101 or of a refusal (`Reject`). Never: I/O, clocks, admission or auth
decisions (the server makes those and hands us a `Reject`), or a request head over
`MAX_REQUEST_BYTES`, however its bytes arrive (`RequestHeadLimit` sees them before h11).

A request that is not a valid WebSocket upgrade raises `BadUpgrade` (the peer's fault) with
the status and reason to refuse it with (431 for a head over the cap); the connection then ends.
With `max_body_bytes` set
(the server also answers plain HTTP: webhooks), a request that asks for no upgrade at all is
returned as a `Handshake` with `upgrade` false and its body (at most `max_body_bytes`, however
it arrives: a larger one raises `BadUpgrade` 413), to be answered with `respond()`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Final

import attrs
import h11

from ..errors import CLOSE_ABNORMAL, BadUpgrade, ConnectionClosed
from .request_head import HeadTooLarge, RequestHeadLimit

MAX_REQUEST_BYTES: Final = 16384  # the upgrade request's head; ACS sends well under 4 KB
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


@attrs.frozen
class Handshake:
    """The upgrade request: its target (path and query) and headers (names lower-cased); or,
    with `upgrade` false, a plain HTTP request and its body."""

    target: str
    headers: dict[str, str]
    method: str = "GET"
    body: bytes = b""
    upgrade: bool = True


@attrs.frozen
class Reject:
    """A handshake refusal: the HTTP status sent instead of 101."""

    status: int
    reason: str


class ServerHandshake:
    """Feed it the peer's bytes until `next_request()` returns the `Handshake`; then send the
    bytes of `accept()` or `reject(...)`."""

    __slots__ = ("_body", "_http", "_key", "_limit", "_max_body", "_request", "_too_large")

    def __init__(self, max_body_bytes: int | None = None) -> None:
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._limit = RequestHeadLimit(MAX_REQUEST_BYTES, count=1)  # then frames may follow
        self._too_large: HeadTooLarge | None = None  # raised as BadUpgrade by next_request
        self._key = b""
        self._request: h11.Request | None = None  # its head came; its end may not have
        self._max_body = max_body_bytes  # None: plain HTTP requests are refused (426)
        self._body = bytearray()

    def receive_data(self, data: bytes | bytearray) -> None:
        """The next bytes from the peer; b"" when it closed its side."""
        if self._too_large is not None:
            return
        try:
            self._limit.feed(data)
        except HeadTooLarge as exc:
            self._too_large = exc  # h11 never sees that head
            return
        self._http.receive_data(bytes(data))

    def next_request(self) -> Handshake | None:
        """The upgrade request once it is complete; None until then. Raises `BadUpgrade`, or
        `ConnectionClosed` if the peer closed before the request was complete."""
        if self._too_large is not None:
            raise BadUpgrade(431, "request head too large", str(self._too_large))
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadUpgrade(exc.error_status_hint, "bad HTTP request", str(exc)) from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                self._request = event
                self._check_length(event)
            elif isinstance(event, h11.Data) and self._max_body is not None:
                self._body += event.data
                if len(self._body) > self._max_body:
                    raise BadUpgrade(413, f"body over {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionClosed(CLOSE_ABNORMAL, "EOF during the handshake")
        request = self._request
        assert request is not None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        refusal = check_upgrade(request.method, headers)
        if refusal is not None and self._max_body is not None and "upgrade" not in headers:
            method, target = request.method.decode("latin-1"), request.target.decode("latin-1")
            return Handshake(target, headers, method, bytes(self._body), upgrade=False)
        if refusal is not None:
            raise BadUpgrade(refusal.status, refusal.reason)
        self._key = headers["sec-websocket-key"].strip().encode()
        return Handshake(request.target.decode("latin-1"), headers)

    def accept(self) -> tuple[bytes, bytes]:
        """The 101 response, and the bytes the peer sent right behind its request (frames)."""
        data = self._http.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    (b"upgrade", b"websocket"),
                    (b"connection", b"Upgrade"),
                    (b"sec-websocket-accept", accept_key(self._key)),
                ],
            )
        )
        trailing, _ = self._http.trailing_data
        return data or b"", bytes(trailing)

    def _check_length(self, request: h11.Request) -> None:
        """Refuse a declared body over the cap before reading it."""
        if self._max_body is None:
            return
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self._max_body:
                raise BadUpgrade(413, f"body over {self._max_body} bytes")

    def reject(self, refusal: Reject) -> bytes:
        """The refusal's response; b"" if h11 cannot answer in this state (garbage request)."""
        headers: list[tuple[bytes, bytes]] = []
        if refusal.status == 426:
            headers.append((b"upgrade", b"websocket"))
        elif refusal.status == 401:  # RFC 9110 section 15.5.2: say which scheme is wanted
            headers.append((b"www-authenticate", b"Bearer"))
        return self.respond(refusal.status, refusal.reason.encode(), headers)

    def respond(
        self,
        status: int,
        body: bytes,
        extra: Sequence[tuple[bytes, bytes]] = (),
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> bytes:
        """A whole response that closes the connection; b"" if h11 cannot answer now."""
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        try:
            data = self._http.send(h11.Response(status_code=status, headers=headers))
            data = (data or b"") + (self._http.send(h11.Data(data=body)) or b"")
            return data + (self._http.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            return b""


def accept_key(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value that answers the key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def check_upgrade(method: bytes, headers: dict[str, str]) -> Reject | None:
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
