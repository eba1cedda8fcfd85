"""A small HTTP/1.1 server for test doubles (the fake ACS control plane, webhook receivers).

Owns: reading requests off a stream with h11 (keep-alive, bodies capped), handing each to an
async handler, and writing its response. Never interprets a request: the handler does. A
malformed or oversized request closes that connection only.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

MAX_BODY = 1 << 20  # test doubles never need more; a bigger body is a bug in the caller


@attrs.frozen
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@attrs.define
class HttpServer:
    """A running server: `url` is its base (`https://127.0.0.1:PORT` or `http://...`)."""

    url: str
    port: int


async def _read(http: h11.Connection, stream: trio.abc.Stream) -> HttpRequest | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            http.receive_data(bytes(data))  # b"" marks the end of the stream
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            return HttpRequest(
                request.method.decode(), request.target.decode(), headers, bytes(body)
            )
        else:  # ConnectionClosed, PAUSED
            return None


async def _serve_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            request = await _read(http, stream)
            if request is None:
                return
            response = await handler(request)
            headers = [*response.headers, ("content-length", str(len(response.body)))]
            out = http.send(h11.Response(status_code=response.status, headers=headers)) or b""
            out += http.send(h11.Data(data=response.body)) or b"" if response.body else b""
            out += http.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                return
            http.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, ssl.SSLError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http(
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    port: int = 0,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on 127.0.0.1 (`port`, 0: any free one), over TLS when `ssl_context` is
    given, until cancelled."""
    sockets = await trio.open_tcp_listeners(port, host="127.0.0.1")
    port = sockets[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[Any]] = list(sockets)
    if ssl_context is not None:
        listeners = [trio.SSLListener(s, ssl_context, https_compatible=True) for s in sockets]
    scheme = "https" if ssl_context is not None else "http"

    async def handle(stream: trio.abc.Stream) -> None:
        await _serve_connection(stream, handler)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(HttpServer(f"{scheme}://127.0.0.1:{port}", port))
