"""The media-streaming server: listeners, handshake checks, admission, and graceful drain.

Owns: connections. It knows nothing of audio: each accepted WebSocket is handed to
`gateway.call.run_call`, in its own task in the server's calls nursery.

Handshake checks, in order: the upgrade must complete within `handshake_timeout` (TLS included);
while draining, or at `max_calls` live calls, the upgrade is refused with HTTP 503 before it is
accepted. Any path is accepted. The `x-ms-call-connection-id` and `x-ms-call-correlation-id`
headers tag every log line of the call.

Resource handling: every accepted stream is closed (`aclose_forcefully`) before its handler
returns, whatever happened; a call still open when the server is cancelled is closed with 1001.
Error handling: one error boundary per connection. A peer's bad input ends at most its own call;
an unexpected exception is logged with the call's ids and counted in `calls_failed`; the server
and the other calls go on.

Drain (`Server.drain(grace)`): stop accepting and close the listeners, let live calls go on for
`grace` seconds, then cancel them (hypercorn's `worker_serve` in one line). `serve()` returns
when the last call has ended.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections import Counter
from typing import Any, Final

import attrs
import trio

from .call import CallOutcome, CallTimings, run_call
from .config import Config
from .errors import CLOSE_GOING_AWAY
from .logs import call_logger
from .ops.metrics import Metrics
from .pacer import Pacer
from .processors import CallStats, Processor
from .transport import SocketTransport
from .websocket import ConnectionClosed, Reject, ServerWebSocket

log = logging.getLogger("gateway.server")

# Errors from accept() that mean "out of file descriptors/memory right now", not "broken";
# trio's serve_listeners waits and retries on the same set.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SLEEP: Final = 0.1  # seconds; long enough for a call to end and free an fd
CLOSE_ON_CANCEL_TIMEOUT: Final = 1.0  # seconds for the 1001 close when calls are cancelled


@attrs.define
class ServerStats:
    """Server-wide counters (exported as metrics)."""

    calls_accepted: int = 0
    calls_refused: int = 0  # 503 at the limit or while draining
    calls_failed: int = 0  # ended by a processor error or a gateway bug
    handshakes_failed: int = 0  # timed out, or not a WebSocket upgrade
    audio_frames_in: int = 0
    audio_frames_dropped: int = 0
    messages_out: int = 0
    stop_audio_sent: int = 0
    protocol_errors: Counter[str] = attrs.field(factory=Counter)
    ended_by: Counter[str] = attrs.field(factory=Counter)

    def add(self, outcome: CallOutcome) -> None:
        s = outcome.stats
        self.audio_frames_in += s.audio_frames_in
        self.audio_frames_dropped += s.audio_frames_dropped
        self.messages_out += s.messages_out
        self.stop_audio_sent += s.stop_audio_sent
        self.protocol_errors.update(s.protocol_errors)
        self.ended_by[outcome.ended_by] += 1
        if outcome.ended_by == "processor_error":
            self.calls_failed += 1


class Server:
    """A running server; `serve()` hands it to `task_status.started`."""

    def __init__(
        self, config: Config, processor: Processor, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.processor = processor
        self.stats = ServerStats()
        self.metrics = Metrics() if metrics is None else metrics  # a private registry by default
        self.tls_context: ssl.SSLContext | None = None  # serving wss://; SIGHUP reloads its cert
        self._timings = CallTimings(self.metrics.processing.observe, self.metrics.lateness.observe)
        self.reserved = 0  # calls admitted (from the accepted upgrade to the end of the call)
        self.urls: list[str] = []
        self.draining = False
        self._accepting = trio.CancelScope()
        self._calls_scope: trio.CancelScope | None = None
        self._hard_stop = False
        self.stopped = trio.Event()  # set when serve() returns
        self.pacer = Pacer()  # one timer for every call's send task

    @property
    def live(self) -> int:
        return self.reserved

    @property
    def port(self) -> int:
        return int(self.urls[0].rsplit(":", 1)[1])

    def drain(self, grace: float | None = None) -> None:
        """Stop accepting; cancel the calls still live `grace` seconds from now."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.draining = True
        self._accepting.cancel()
        assert self._calls_scope is not None
        self._calls_scope.deadline = min(self._calls_scope.deadline, trio.current_time() + grace)
        log.info("draining: %d live call(s), grace %.1f s", self.live, grace)

    def readiness(self) -> tuple[bool, str]:
        """Would a new call be admitted now, and if not, why (the health endpoint's /readyz)."""
        if self.draining:
            return False, "draining"
        if self.reserved >= self.config.max_calls:
            return False, f"at the limit of {self.config.max_calls} calls"
        return True, "ready"

    def stop_now(self) -> None:
        """Cancel every call at once (a second signal)."""
        self._hard_stop = True
        self.drain(0)

    async def _accept_loop(self, listener: trio.abc.Listener[Any], calls: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("accept failed (%s); retrying in %.1f s", exc, ACCEPT_RETRY_SLEEP)
                await trio.sleep(ACCEPT_RETRY_SLEEP)
            else:
                if isinstance(stream, trio.SocketStream):
                    stream = SocketTransport.from_socket_stream(stream)
                calls.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        config = self.config
        peer = _peer(stream)
        ws = ServerWebSocket(stream, max_message_bytes=config.max_message_bytes)
        admitted = False
        ended_by, call = "hangup", None  # for the metrics: how an admitted call ended
        try:
            handshake = None
            with trio.move_on_at(trio.current_time() + config.handshake_timeout):
                handshake = await ws.read_handshake()
            if handshake is None:
                self.stats.handshakes_failed += 1
                self.metrics.handshakes_failed.labels("timeout").inc()
                log.info("handshake from %s timed out", peer)
                return
            calllog = call_logger(
                handshake.headers.get("x-ms-call-connection-id"),
                handshake.headers.get("x-ms-call-correlation-id"),
                peer,
            )
            refusal = self._admission()
            if refusal is not None:
                self.stats.calls_refused += 1
                self.metrics.calls_refused.labels(str(refusal.status)).inc()
                calllog.warning("refusing the call: %s", refusal.reason)
                await ws.reject(refusal)
                return
            self.reserved += 1
            admitted = True
            live = self.metrics.call_started(call_stats := CallStats())
            admitted_at = trio.current_time()
            await ws.accept()
            self.stats.calls_accepted += 1
            self.metrics.calls_accepted.inc()
            calllog.info("accepted %s", handshake.target)
            outcome = await run_call(
                ws,
                handshake,
                self.processor,
                config.call_settings,
                calllog,
                pacer=self.pacer,
                stats=call_stats,
                timings=self._timings,
            )
            self.stats.add(outcome)
            ended_by, call = outcome.ended_by, outcome.call
            calllog.info(
                "call ended by %s (close code %s): %d frames in, %d dropped, %d messages out",
                outcome.ended_by,
                outcome.close_code,
                outcome.stats.audio_frames_in,
                outcome.stats.audio_frames_dropped,
                outcome.stats.messages_out,
            )
        except ConnectionClosed as closed:
            self.stats.handshakes_failed += not admitted
            if not admitted:
                self.metrics.handshakes_failed.labels("invalid").inc()
            log.debug("connection from %s closed during the handshake: %s", peer, closed)
        except Exception:
            self.stats.calls_failed += 1
            self.metrics.calls_failed.inc()
            ended_by = "gateway_error"
            log.exception("call from %s failed in the gateway", peer)
        finally:
            if admitted:
                self.reserved -= 1
                self.metrics.call_ended(live, trio.current_time() - admitted_at, ended_by, call)
            if ws.closed is None and admitted and not self._hard_stop:
                with trio.CancelScope(
                    shield=True, deadline=trio.current_time() + CLOSE_ON_CANCEL_TIMEOUT
                ):
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")
            await trio.aclose_forcefully(stream)

    def _admission(self) -> Reject | None:
        if self.draining:
            return Reject(503, "server is shutting down")
        if self.reserved >= self.config.max_calls:
            return Reject(503, f"at the limit of {self.config.max_calls} calls")
        return None


def _peer(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)  # SSLStream -> the TCP stream
    sock = getattr(inner, "socket", None)
    try:
        host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return "-"
    return f"{host}:{port}"


def _ssl_context(config: Config) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert config.tls_certfile is not None and config.tls_keyfile is not None
    context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
    return context


async def serve(
    config: Config,
    processor: Processor,
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve calls until drained (or cancelled). The one entry point for the daemon
    and the tests: `server = await nursery.start(serve, config, processor)`."""
    server = Server(config, processor, metrics)
    listeners: list[trio.abc.Listener[Any]] = list(
        await trio.open_tcp_listeners(config.port, host=config.host)
    )
    scheme = "ws"
    if config.tls_certfile is not None:
        context = server.tls_context = _ssl_context(config)
        listeners = [trio.SSLListener(ln, context, https_compatible=True) for ln in listeners]
        scheme = "wss"
    for listener in listeners:
        sock = getattr(listener, "transport_listener", listener).socket
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        server.urls.append(f"{scheme}://{host}:{port}")
    try:
        async with trio.open_nursery() as services:
            await services.start(server.pacer.run)  # outlives every call; ends after them
            services.start_soon(server.metrics.flush_periodically)
            await _serve_calls(server, listeners, task_status)
            services.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        server.stopped.set()
    log.info("server stopped")


async def _serve_calls(
    server: Server, listeners: list[trio.abc.Listener[Any]], task_status: trio.TaskStatus[Server]
) -> None:
    """Accept until drained; return when the last call has ended."""
    async with trio.open_nursery() as calls:
        server._calls_scope = calls.cancel_scope
        with server._accepting:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(server._accept_loop, listener, calls)
                for url in server.urls:
                    log.info("listening on %s", url)
                task_status.started(server)
        # Draining: refuse new connections at once (closed port) while live calls go on.
        for listener in listeners:
            await trio.aclose_forcefully(listener)
