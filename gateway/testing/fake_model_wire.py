"""The fake realtime model's side of the wire: each client's WebSocket, accepted and served on
the gateway's own server-side classes (`gateway.wire`: `SocketTransport`, `ServerWebSocket`),
as the gateway accepts ACS's; over TLS (`trio.SSLStream`) when the model serves `wss://`.

Owns: the handshake's outcome (the model's `refusal` decides: a status, 401 for a wrong API
key, or accepted), the socket a session reads and writes (`ModelSocket`), and reads that stall
while the model is silent (`Stallable`: nothing is read, so pings go unanswered). Never: the
Realtime protocol or JSON (`fake_model`), tasks of its own.

Why not trio-websocket (which served the fake model before): a reader task and a channel hop
per message and wsproto's pure-Python unmasking of every client frame made the fake model the
bottleneck of the bridged benchmarks (`bench/fake_model_capacity.py`). Here the session's task
reads the socket itself; one read yields every message it completed (`get_message` takes them
one by one), and pings are answered within that read.

The session-facing verbs keep trio-websocket's shape (`get_message`, `send_message`,
`aclose(code, reason)`, and its `ConnectionClosed` when the connection is over), so sessions
written against it (`bench/echo_model.py`'s) keep working. `get_message` returns the message's
bytes (UTF-8 JSON for a text message), which `orjson.loads` takes as they are.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import trio
import trio_websocket

from .. import errors
from ..wire.transport import SocketTransport
from ..wire.websocket import Reject, ServerWebSocket

if TYPE_CHECKING:
    from .fake_model import FakeModel

__all__ = ["ConnectionClosed", "ModelSocket", "Reject", "Stallable", "refusal_reason"]

MAX_MESSAGE_BYTES: Final = 1 << 20  # trio-websocket's default, which the fake model had

# What a session catches when its connection is over (see the module docstring).
ConnectionClosed = trio_websocket.ConnectionClosed


class Stallable(trio.abc.Stream):
    """A socket stream that stops reading while the model is `silent`; writes go on."""

    def __init__(self, inner: SocketTransport, model: FakeModel) -> None:
        self.inner = inner
        self.model = model
        self.send_nowait = inner.send_nowait  # ServerWebSocket's write path without waiting

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while self.model.silent:
            await self.model._unstalled.park()
        data = await self.inner.receive_some(max_bytes)
        while self.model.silent:  # it went silent during the read: those bytes wait too
            await self.model._unstalled.park()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def refusal_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "refused"


class ModelSocket:
    """One client's connection: `accept()` the handshake, then the session's verbs. `stream` is
    the `Stallable` under it (`FakeModel.drop()` closes it abruptly)."""

    def __init__(
        self, stream: trio.SocketStream, model: FakeModel, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.stream = Stallable(SocketTransport.from_socket_stream(stream), model)
        # TLS over the stallable socket: a silent model stops reading the encrypted bytes too.
        wire: trio.abc.Stream = (
            self.stream
            if ssl_context is None
            else trio.SSLStream(self.stream, ssl_context, server_side=True)
        )
        # A write waits for a client that stopped reading however long, as with trio-websocket.
        self._ws = ServerWebSocket(wire, max_message_bytes=MAX_MESSAGE_BYTES, send_timeout=math.inf)
        self._unread: deque[bytes] = deque()

    async def accept(self, refusal: Callable[[str, dict[str, str]], Reject | None]) -> bool:
        """Read the upgrade request and answer it: `refusal(target, headers)` says whether to
        refuse it (and how). True if the WebSocket is open."""
        ws = self._ws
        try:
            request = await ws.read_handshake()
            refused = refusal(request.target, request.headers)
            if refused is not None:
                await ws.reject(refused)
                return False
            await ws.accept()
        except errors.ConnectionClosed:
            return False
        return True

    async def get_message(self) -> bytes:
        """The next message; `ConnectionClosed` once the connection is over."""
        unread = self._unread
        while not unread:
            try:
                unread.extend(m.data for m in await self._ws.receive_messages())
            except errors.ConnectionClosed as exc:
                raise _closed(exc) from None
        return unread.popleft()

    async def send_message(self, message: str) -> None:
        try:
            await self._ws.send_messages([message])
        except errors.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def aclose(self, code: int = errors.CLOSE_NORMAL, reason: str | None = None) -> None:
        """Send a close frame and wait briefly for the client's."""
        await self._ws.close(code, reason or "")

    async def abort(self) -> None:
        """Close the socket, without the closing handshake."""
        await trio.aclose_forcefully(self.stream)


def _closed(exc: errors.ConnectionClosed) -> trio_websocket.ConnectionClosed:
    return trio_websocket.ConnectionClosed(trio_websocket.CloseReason(exc.code, exc.reason))
