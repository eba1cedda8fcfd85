"""The media-streaming server: listeners, handshake checks, admission, and graceful drain.

Owns: connections. It knows nothing of audio: each accepted WebSocket is handed to
`gateway.call.run_call`, in its own task in the server's calls nursery.

Handshake checks, in order: the upgrade must complete within `handshake_timeout` (TLS included);
a source address outside `allowed_networks` is refused with HTTP 403; with `acs_resource_id`
set, ACS's token must pass `gateway.auth` within the same deadline (else HTTP 401, or 503 when
the signing keys cannot be had); at `max_calls` live calls the upgrade is refused with HTTP 503,
and at `max_calls_per_source` calls from one address with 429, before it is accepted. Admission
and the reservation of a call's place happen with no await between them (after the token check,
which may wait), so the limits hold however many handshakes race. While draining, nothing more
is accepted, and a connection accepted before is served. Any path is accepted. The
`x-ms-call-connection-id` and `x-ms-call-correlation-id` headers tag every log line of the call.

Resource handling: every accepted stream is closed (`aclose_forcefully`) before its handler
returns, whatever happened; a call still open when the server is cancelled is closed with 1001.
Error handling: one error boundary per connection. A peer's bad input ends at most its own call;
an unexpected exception is logged with the call's ids and counted in `calls_failed`; the server
and the other calls go on.

Drain (`Server.drain(grace)`): stop accepting and close the listeners, let live calls go on for
`grace` seconds, then cancel them (hypercorn's `worker_serve` in one line). `serve()` returns
when the last call has ended.

Listening sockets: bound here from `host`/`port`, or handed in already bound (`sockets=`: from
systemd's socket activation, or one of a supervisor's SO_REUSEPORT sockets). A handed-in
socket is only closed here, never shut down: its owner keeps the accept queue alive, so under
socket activation connections that arrive while this process drains wait for the next one.

Service manager: `notifier` (`gateway.ops.systemd`) gets READY=1 once listening, STATUS= with
the live calls when they change (at most every `STATUS_INTERVAL`), STOPPING=1 on drain, and
WATCHDOG=1 from this event loop when systemd asked for it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from ..call.pacer import Pacer
from ..call.run import CallOutcome, CallTimings, run_call
from ..config import Config
from ..errors import CLOSE_GOING_AWAY
from ..logs import call_logger
from ..ops import systemd
from ..ops.metrics import Metrics
from ..processors import CallStats, Processor
from ..wire.transport import SocketTransport
from ..wire.websocket import ConnectionClosed, Reject, SendTimeout, ServerWebSocket
from .auth import AuthFailure, KeySet, TokenChecker

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
    calls_refused: int = 0  # 403/429/503 before the upgrade (by reason in refused_by)
    calls_failed: int = 0  # ended by a processor error or a gateway bug
    handshakes_failed: int = 0  # timed out, or not a WebSocket upgrade
    audio_frames_in: int = 0
    audio_frames_dropped: int = 0
    messages_out: int = 0
    stop_audio_sent: int = 0
    protocol_errors: Counter[str] = attrs.field(factory=Counter)
    ended_by: Counter[str] = attrs.field(factory=Counter)
    # Limits and authentication (issue 5):
    refused_by: Counter[str] = attrs.field(factory=Counter)  # calls_refused, by reason
    auth_failed: Counter[str] = attrs.field(factory=Counter)  # by AuthFailure.reason
    frames_flood_dropped: int = 0

    def add(self, outcome: CallOutcome) -> None:
        s = outcome.stats
        self.audio_frames_in += s.audio_frames_in
        self.audio_frames_dropped += s.audio_frames_dropped
        self.messages_out += s.messages_out
        self.stop_audio_sent += s.stop_audio_sent
        self.frames_flood_dropped += s.frames_flood_dropped
        self.protocol_errors.update(s.protocol_errors)
        self.ended_by[outcome.ended_by] += 1
        if outcome.error is not None:  # the processor raised, even after a hang-up
            self.calls_failed += 1


class Server:
    """A running server; `serve()` hands it to `task_status.started`."""

    def __init__(
        self,
        config: Config,
        processor: Processor,
        metrics: Metrics | None = None,
        notifier: systemd.Notifier | None = None,
    ) -> None:
        self.config = config
        self.processor = processor
        self.notifier = notifier or systemd.Notifier(None)
        self.changes = systemd.Changes()  # live calls, readiness or draining: for STATUS=
        self.stats = ServerStats()
        self.metrics = Metrics() if metrics is None else metrics  # a private registry by default
        self.tls_context: ssl.SSLContext | None = None  # serving wss://; SIGHUP reloads its cert
        self._timings = CallTimings(self.metrics.processing.observe, self.metrics.lateness.observe)
        self.reserved = 0  # calls admitted (from the accepted upgrade to the end of the call)
        self.reserved_by_source: Counter[str] = Counter()  # the same, by source address
        self.allowed_networks = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.allowed_networks
        )
        self.urls: list[str] = []
        self.draining = False
        self._accepting = trio.CancelScope()
        self._calls_scope: trio.CancelScope | None = None
        self._hard_stop = False
        self.stopped = trio.Event()  # set when serve() returns
        self.pacer = Pacer()  # one timer for every call's send task
        self.auth: TokenChecker | None = None
        if config.acs_resource_id is not None:
            keys = KeySet(
                config.auth_key_set_url,
                refetch_interval=config.auth_key_refetch_interval,
                max_age=config.auth_key_max_age,
            )
            self.auth = TokenChecker(
                keys,
                audience=config.acs_resource_id,
                issuer=config.auth_issuer,
                leeway=config.auth_leeway,
            )

    @property
    def live(self) -> int:
        return self.reserved

    @property
    def ready(self) -> bool:
        """Would admit a new call now (`readiness()` says why not)."""
        return self.readiness()[0]

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
        self.notifier.notify("STOPPING=1", *self._status())
        self.changes.note()

    def _status(self) -> tuple[str, ...]:
        return systemd.status_assignments(self.live, self.ready, self.draining)

    async def _report_status(self) -> None:
        """STATUS= whenever the live calls change, at most every STATUS_INTERVAL seconds."""
        while True:
            await self.changes.wait()
            self.notifier.notify(*self._status())
            await trio.sleep(systemd.STATUS_INTERVAL)

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
        source = peer.rpartition(":")[0].strip("[]")
        ws = ServerWebSocket(
            stream, max_message_bytes=config.max_message_bytes, send_timeout=config.send_timeout
        )
        admitted = False
        ended_by, call = "hangup", None  # for the metrics: how an admitted call ended
        try:
            handshake = None
            deadline = trio.current_time() + config.handshake_timeout
            with trio.move_on_at(deadline):
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
            refused = self._screen(source)
            if refused is None and self.auth is not None:
                failure = await self._authenticate(self.auth, handshake.headers, deadline, calllog)
                if failure is not None:
                    await ws.reject(failure)
                    return
            if refused is None:
                refused = self._admission(source)
            if refused is not None:
                why, refusal = refused
                self.stats.calls_refused += 1
                self.stats.refused_by[why] += 1
                self.metrics.calls_refused.labels(str(refusal.status)).inc()
                calllog.warning("refusing the call (%s): %s", why, refusal.reason)
                await ws.reject(refusal)
                return
            self.reserved += 1
            self.reserved_by_source[source] += 1
            admitted = True
            live = self.metrics.call_started(call_stats := CallStats())
            admitted_at = trio.current_time()
            self.changes.note()
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
            # Only the handshake raises this (run_call does not): lost before or while the
            # 101 went out. Counted here, so every connection is counted once.
            self.stats.handshakes_failed += 1
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
                self.reserved_by_source[source] -= 1
                if not self.reserved_by_source[source]:
                    del self.reserved_by_source[source]
                self.metrics.call_ended(live, trio.current_time() - admitted_at, ended_by, call)
                self.changes.note()
            if isinstance(ws.closed, SendTimeout):
                _reset_on_close(stream)  # drop what the kernel still holds for a stuck peer
            if ws.closed is None and admitted and not self._hard_stop:
                with trio.CancelScope(
                    shield=True, deadline=trio.current_time() + CLOSE_ON_CANCEL_TIMEOUT
                ):
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")
            await trio.aclose_forcefully(stream)

    def _screen(self, source: str) -> tuple[str, Reject] | None:
        """Refuse sources outside the allowed networks (before the token costs anything)."""
        if self.allowed_networks and not _in_networks(source, self.allowed_networks):
            return "network", Reject(403, "the source address is not allowed")
        return None

    async def _authenticate(
        self,
        auth: TokenChecker,
        headers: dict[str, str],
        deadline: float,
        calllog: logging.LoggerAdapter[logging.Logger],
    ) -> Reject | None:
        """Check ACS's token by the handshake deadline; counts and logs a failure's reason."""
        failure = None
        with trio.move_on_at(deadline):
            try:
                await auth.check(headers)
            except AuthFailure as exc:
                failure = exc
            else:
                return None
        if failure is None:
            failure = AuthFailure("keys_unavailable", "no signing keys by the handshake deadline")
        self.stats.auth_failed[failure.reason] += 1
        self.metrics.auth_failed.labels(failure.reason).inc()
        self.metrics.calls_refused.labels(str(failure.status)).inc()
        calllog.warning("refusing the call (%d): token %s", failure.status, failure)
        body = "authentication failed" if failure.status == 401 else "signing keys unavailable"
        return Reject(failure.status, body)

    def _admission(self, source: str) -> tuple[str, Reject] | None:
        """Why a call from `source` may not start now, as (a token for metrics, the refusal);
        None: it may.

        Draining refuses no connection it has accepted: accept() took it out of the kernel's
        queue, where the next process (socket activation) or another worker would have served
        it; a refusal now would drop it. The drain stops accept() instead."""
        if self.reserved >= self.config.max_calls:
            return "max_calls", Reject(503, f"at the limit of {self.config.max_calls} calls")
        per_source = self.config.max_calls_per_source
        if per_source is not None and self.reserved_by_source[source] >= per_source:
            return "max_calls_per_source", Reject(429, f"{per_source} calls from this address")
        return None


def _in_networks(
    source: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:  # no address (not a socket): nothing to match
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


def _reset_on_close(stream: trio.abc.Stream) -> None:
    """Make closing the socket send a reset: a peer that stopped reading would otherwise keep
    its unsent bytes in our kernel until TCP gives up."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # type: ignore[union-attr]
    except (AttributeError, OSError):
        pass


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
    sockets: Sequence[socket.socket] = (),
    notifier: systemd.Notifier | None = None,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve calls until drained (or cancelled). The one entry point for the daemon
    and the tests: `server = await nursery.start(serve, config, processor)`.

    `sockets`: already listening sockets to serve on instead of binding `host`/`port`."""
    server = Server(config, processor, metrics, notifier)
    listeners: list[trio.abc.Listener[Any]]
    if sockets:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    else:
        listeners = list(await trio.open_tcp_listeners(config.port, host=config.host))
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
            if server.auth is not None:
                await services.start(server.auth.keys.run)
            services.start_soon(server.metrics.flush_periodically)
            if server.notifier.enabled:  # outside systemd (or a supervisor) nobody listens
                services.start_soon(server._report_status)
            if server.notifier.watchdog_interval is not None:
                await services.start(
                    systemd.ping_watchdog, server.notifier, server.notifier.watchdog_interval
                )
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
                server.notifier.notify("READY=1", *server._status())
                task_status.started(server)
        # Draining: refuse new connections at once (closed port) while live calls go on.
        for listener in listeners:
            await trio.aclose_forcefully(listener)
