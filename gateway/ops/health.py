"""The health endpoint: liveness, readiness and Prometheus metrics over HTTP/1.1, on its own port.

    GET /livez    200 "ok": the event loop that serves calls answers
    GET /readyz   200 "ready", or 503 with the reason (draining, at max_calls, ...)
    GET /metrics  Prometheus text exposition (OpenMetrics when the scraper asks for it)

Owns: that port and its connections. Never: blocks the event loop (every request is served by
a task of its own, parsing is sans-IO h11), trusts a client, or lets a bad request reach
anything but its own connection. It runs in the process (and the Trio run) whose health it
reports, so `/livez` answering means that event loop is not stuck.

A client can hold only what `HealthLimits` allows (`gateway.ops.health_limits`): a request head
of `max_request_bytes` exactly, however it arrives (431 beyond; no request bodies: 413), a
short time to send each request, a bounded keep-alive, and a place among `max_connections`
that the next client takes from it if it idles. So probes are answered however many
connections a hostile client opens (bench/health_abuse.py).

Resource handling: every connection is closed before its task ends; the listener is closed when
`serve_health` is cancelled. Keep-alive is honoured (Prometheus and kubelet reuse
connections), up to `max_requests_per_connection` requests and `idle_timeout` between them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import h11
import trio
from prometheus_client import CollectorRegistry

from ..wire.request_head import HeadTooLarge, RequestHeadLimit
from ..wire.sockets import bytes_waiting, peer_host
from .health_limits import Connections, HealthLimits, Phase, Slot
from .health_lobby import Admit, Lobby
from .registry import render

log = logging.getLogger("gateway.health")

LIMITS: Final = HealthLimits()
MAX_REQUEST_BYTES: Final = LIMITS.max_request_bytes
MAX_CONNECTIONS: Final = LIMITS.max_connections
RECEIVE_BYTES: Final = 8192

Readiness = Callable[[], tuple[bool, str]]  # (ready?, why not / "ready")
Listener = trio.abc.Listener[trio.abc.Stream]
Exposition = Callable[[str | None], tuple[bytes, str]]  # Accept header -> (body, content type)


class HealthEndpoint:
    """What the endpoint answers, and how it serves one connection; `serve_health` serves it
    on a port. Kept apart from sockets so tests (and a supervisor) can use it directly."""

    def __init__(
        self, readiness: Readiness, metrics: Exposition | None, limits: HealthLimits = LIMITS
    ) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self.limits = limits
        # of every listener
        self.connections = Connections(limits.max_connections, limits.max_connections_per_source)
        self.lobby = Lobby(limits.lobby_wait)  # of every listener

    def answer(self, method: str, target: str, accept: str | None) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        path = target.split("?", 1)[0]
        if path not in ("/livez", "/readyz", "/metrics", "/healthz"):
            return 404, "text/plain; charset=utf-8", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path in ("/livez", "/healthz"):
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            ready, reason = self.readiness()
            if ready:
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", f"not ready: {reason}\n".encode()
        if self.metrics is None:
            return 404, "text/plain; charset=utf-8", b"metrics are not served here\n"
        body, content_type = self.metrics(accept)
        return 200, content_type, body

    async def serve(self, stream: trio.abc.Stream, slot: Slot | None = None) -> None:
        """Answer requests on one connection until it closes, breaks, idles, misbehaves or
        is evicted (`slot.scope` cancelled); closes the stream."""
        slot = Slot(trio.CancelScope()) if slot is None else slot
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_bytes)
        heads = RequestHeadLimit(self.limits.max_request_bytes)
        try:
            with slot.scope:
                for left in reversed(range(self.limits.max_requests_per_connection)):
                    if not await self._serve_request(stream, http, heads, slot, last=not left):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_listeners(
        self, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]
    ) -> None:
        """Accept connections and serve each, until cancelled. A connection that would have to
        evict another (its address holds its share, or the endpoint is full) does so only once
        its request has arrived: it waits in the `Lobby` (no task, no parser) meanwhile, and
        is refused if it stays silent. Any other is taken at once."""
        async with trio.open_nursery() as nursery:

            def admit(stream: trio.abc.Stream, source: str) -> None:  # its request is here
                slot = self.connections.open(source, Phase.READING)
                nursery.start_soon(self._serve_one, stream, slot)

            nursery.start_soon(self.lobby.run, admit)
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery, admit)

    async def serve_listener(self, listener: Listener) -> None:
        await self.serve_listeners([listener])

    async def _accept(self, listener: Listener, nursery: trio.Nursery, admit: Admit) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors: the calls matter more
                log.warning("health endpoint: accept failed (%s)", exc)
                await trio.sleep(0.1)
                continue
            source = peer_host(stream)
            if not self.connections.must_evict(source):  # a free place: take it at once
                nursery.start_soon(self._serve_one, stream, self.connections.open(source))
            elif bytes_waiting(stream) != 0:  # its request is here (or we cannot tell)
                admit(stream, source)
            else:
                self.lobby.park(stream, source)

    async def _serve_one(self, stream: trio.abc.Stream, slot: Slot) -> None:
        try:
            await self.serve(stream, slot)
        finally:
            self.connections.close(slot)

    async def _serve_request(
        self,
        stream: trio.abc.Stream,
        http: h11.Connection,
        heads: RequestHeadLimit,
        slot: Slot,
        *,
        last: bool,
    ) -> bool:
        """Read one request and answer it; False when the connection should close."""
        limits = self.limits
        if slot.phase is Phase.ANSWERING:  # the previous request's; a new slot is set at accept
            slot.enter(Phase.IDLE)
        reading = slot.phase is Phase.READING  # accepted with its request already waiting
        deadline = slot.since + (limits.header_timeout if reading else limits.idle_timeout)
        request: h11.Request | None = None
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send(stream, _error(http, exc.error_status_hint))
                return False
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline) as waiting:
                    data = await stream.receive_some(RECEIVE_BYTES)
                if waiting.cancelled_caught:
                    return False  # too slow: the client goes, nothing else waited for it
                if slot.phase is Phase.IDLE:
                    slot.enter(Phase.READING)
                    deadline = slot.since + limits.header_timeout
                try:
                    heads.feed(data)
                except HeadTooLarge:
                    await self._send(stream, _error(http, 431))
                    return False
                http.receive_data(bytes(data))  # b"": EOF
            elif isinstance(event, h11.Request):
                request = event
                if _has_body(request):  # probes and scrapes send none; nothing else is served
                    await self._send(stream, _error(http, 413))
                    return False
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return False
        assert request is not None
        slot.enter(Phase.ANSWERING)
        accept = next((v.decode("latin-1") for k, v in request.headers if k == b"accept"), None)
        method = request.method.decode("ascii", "replace")
        status, content_type, body = self.answer(method, request.target.decode("latin-1"), accept)
        close = ((b"connection", b"close"),) if last else ()
        answer = _response(http, status, content_type, body, method == "HEAD", close)
        if not await self._send(stream, answer):
            return False
        if http.our_state is h11.MUST_CLOSE or http.their_state is not h11.DONE:
            return False
        http.start_next_cycle()
        return True

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> bool:
        """Send `data` within `send_timeout`; False if the client did not take it in time."""
        with trio.move_on_after(self.limits.send_timeout):
            await stream.send_all(data)
            return True
        return False


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def serve_health(
    host: str,
    port: int,
    readiness: Readiness,
    *,
    registry: CollectorRegistry | None = None,
    metrics: Exposition | None = None,
    limits: HealthLimits = LIMITS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the health endpoint on `host`:`port` (0: any free port) until cancelled.
    `await nursery.start(serve_health, ...)` returns the bound port once it listens.

    `readiness()` says whether a new call would be admitted, and why not. `/metrics` shows
    `registry` (e.g. `multiprocess_registry()` in a supervisor), or what `metrics(accept)`
    renders (`Metrics.exposition`, which flushes live calls first); neither: no `/metrics`."""
    if metrics is None and registry is not None:
        metrics = partial(render, registry)
    endpoint = HealthEndpoint(readiness, metrics, limits)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.serve_listeners, listeners)
            for listener in listeners:
                address = listener.socket.getsockname()
                log.info("health and metrics on http://%s:%d/", *_printable(address))
            task_status.started(bound)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def _printable(address: Any) -> tuple[str, int]:
    host, port = address[:2]
    return (f"[{host}]" if ":" in host else host), port


def _response(
    http: h11.Connection,
    status: int,
    content_type: str,
    body: bytes,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    reason = HTTPStatus(status).phrase.encode()
    data = http.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if not head_only:
        data += http.send(h11.Data(data=body)) or b""
    return data + (http.send(h11.EndOfMessage()) or b"")


def _error(http: h11.Connection, status: int) -> bytes:
    """The answer to a request we will not serve (400, 413, 431, ...); b"" if we may not."""
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return b""
    body = f"{HTTPStatus(status).phrase}\n".encode()
    try:
        return _response(
            http, status, "text/plain; charset=utf-8", body, extra=((b"connection", b"close"),)
        )
    except h11.LocalProtocolError:
        return b""
