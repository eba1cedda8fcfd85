"""The health endpoint: liveness, readiness and Prometheus metrics over HTTP/1.1, on its own port.

    GET /livez    200 "ok": the event loop that serves calls answers
    GET /readyz   200 "ready", or 503 with the reason (draining, at max_calls, ...)
    GET /metrics  Prometheus text exposition (OpenMetrics when the scraper asks for it)

Owns: that port and its connections. Never: blocks the event loop (every request is served by
a task of its own, parsing is sans-IO h11), trusts a client (the request head is capped at
`MAX_REQUEST_BYTES`, a connection gets `REQUEST_TIMEOUT` seconds per request and at most
`MAX_CONNECTIONS` are served at once), or lets a bad request reach anything but its own
connection. It runs in the process (and the Trio run) whose health it reports, so `/livez`
answering means that event loop is not stuck.

Resource handling: every connection is closed before its task ends; the listener is closed when
`serve_health` is cancelled. Keep-alive is honoured (Prometheus and kubelet reuse
connections), up to `MAX_REQUESTS_PER_CONNECTION`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import h11
import trio
from prometheus_client import CollectorRegistry

from .metrics import render

log = logging.getLogger("gateway.health")

MAX_REQUEST_BYTES: Final = 8192  # a probe or a scrape sends a few hundred bytes
REQUEST_TIMEOUT: Final = 10.0  # seconds to receive a request and send the answer
MAX_CONNECTIONS: Final = 64  # probes and scrapers at once; more are closed at once
MAX_REQUESTS_PER_CONNECTION: Final = 1000
RECEIVE_BYTES: Final = 8192

Readiness = Callable[[], tuple[bool, str]]  # (ready?, why not / "ready")
Exposition = Callable[[str | None], tuple[bytes, str]]  # Accept header -> (body, content type)


class HealthEndpoint:
    """What the endpoint answers; `serve_health` serves it. Kept apart from sockets so tests
    (and a supervisor) can ask it directly."""

    def __init__(self, readiness: Readiness, metrics: Exposition | None) -> None:
        self.readiness = readiness
        self.metrics = metrics

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

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Answer requests on one connection until it closes, breaks, idles or misbehaves;
        closes the stream."""
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                with trio.move_on_after(REQUEST_TIMEOUT):
                    if not await self._serve_request(stream, http):
                        return
                    continue
                return  # too slow: the client goes, nothing else waited for it
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_request(self, stream: trio.abc.Stream, http: h11.Connection) -> bool:
        """Read one request and answer it; False when the connection should close."""
        request: h11.Request | None = None
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                await _send_error(stream, http, exc.error_status_hint)
                return False
            if event is h11.NEED_DATA:
                http.receive_data(bytes(await stream.receive_some(RECEIVE_BYTES)))  # b"": EOF
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return False
        assert request is not None
        accept = next((v.decode("latin-1") for k, v in request.headers if k == b"accept"), None)
        method = request.method.decode("ascii", "replace")
        status, content_type, body = self.answer(method, request.target.decode("latin-1"), accept)
        await stream.send_all(_response(http, status, content_type, body, method == "HEAD"))
        if http.our_state is h11.MUST_CLOSE or http.their_state is not h11.DONE:
            return False
        http.start_next_cycle()
        return True


async def serve_health(
    host: str,
    port: int,
    readiness: Readiness,
    *,
    registry: CollectorRegistry | None = None,
    metrics: Exposition | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the health endpoint on `host`:`port` (0: any free port) until cancelled.
    `await nursery.start(serve_health, ...)` returns the bound port once it listens.

    `readiness()` says whether a new call would be admitted, and why not. `/metrics` shows
    `registry` (e.g. `multiprocess_registry()` in a supervisor), or what `metrics(accept)`
    renders (`Metrics.exposition`, which flushes live calls first); neither: no `/metrics`."""
    if metrics is None and registry is not None:
        metrics = partial(render, registry)
    endpoint = HealthEndpoint(readiness, metrics)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    limit = trio.CapacityLimiter(MAX_CONNECTIONS)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, endpoint, limit, nursery)
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


async def _accept_loop(
    listener: trio.SocketListener,
    endpoint: HealthEndpoint,
    limit: trio.CapacityLimiter,
    nursery: trio.Nursery,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:  # out of file descriptors: the calls matter more; try later
            log.warning("health endpoint: accept failed (%s)", exc)
            await trio.sleep(0.1)
            continue
        try:
            limit.acquire_on_behalf_of_nowait(stream)
        except trio.WouldBlock:  # too many at once: this one goes, the served ones stay
            await trio.aclose_forcefully(stream)
            continue
        nursery.start_soon(_serve_one, stream, endpoint, limit)


async def _serve_one(
    stream: trio.SocketStream, endpoint: HealthEndpoint, limit: trio.CapacityLimiter
) -> None:
    try:
        await endpoint.serve(stream)
    finally:
        limit.release_on_behalf_of(stream)


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


async def _send_error(stream: trio.abc.Stream, http: h11.Connection, status: int) -> None:
    """Answer a request h11 could not parse (400, 431 too large, ...), if we still may."""
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{HTTPStatus(status).phrase}\n".encode()
    try:
        data = _response(
            http, status, "text/plain; charset=utf-8", body, extra=((b"connection", b"close"),)
        )
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
