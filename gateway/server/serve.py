"""The media-streaming server: listeners, the accept loop, graceful drain, and its services.

Owns: listening sockets and the calls nursery. Each accepted stream is handed to
`gateway.server.connection.serve_connection` (handshake checks, admission, the call, the
accounting, the close) in its own task in the calls nursery. It knows nothing of audio.

Drain (`Server.drain(grace)`): readiness goes false at once; `drain_delay` seconds later (time
for load balancers polling `/readyz` to stop sending; connections that still come are served)
stop accepting and close the listeners, let live calls go on for `grace` seconds, then cancel
them (hypercorn's `worker_serve` in one line). `serve()` returns when the last call has ended.
Once the listeners close, nothing more is accepted, and a connection accepted before is served.

Accepting under abuse: right after accept(), before a byte is read, a connection beyond
`max_pending_handshakes` (or its per-source bound) is closed at once with a reset and counted
(`ServerStats.connections_refused`). At start the soft RLIMIT_NOFILE is raised to the hard
limit. When accept() fails for want of descriptors (EMFILE/ENFILE) it is counted
(`ServerStats.accept_errors`), one spare descriptor kept for this is freed to accept the waiting
connection and close it at once (counted as `no_fds`), and the server goes on: a peer gets a
prompt close rather than a connection stuck in the queue, and nothing crashes.

Listening sockets: bound here from `host`/`port`, or handed in already bound (`sockets=`: from
systemd's socket activation, or one of a supervisor's SO_REUSEPORT sockets). A handed-in
socket is only closed here, never shut down: its owner keeps the accept queue alive, so under
socket activation connections that arrive while this process drains wait for the next one.

Services (tasks that outlive every call): the shared pacer, the token checker's key set, the
metrics flush (the counters derive from `ServerStats` there; a last flush on the way out), and
for the service manager (`notifier`, `gateway.ops.systemd`): READY=1 once listening, STATUS=
with the live calls when they change (at most every `STATUS_INTERVAL`), STOPPING=1 on drain,
and WATCHDOG=1 from this event loop when systemd asked for it.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

import trio

from ..call.pacer import Pacer
from ..call.run import CallTimings
from ..config import Config
from ..ops import systemd
from ..ops.metrics import Metrics
from ..processors import Processor
from ..records import Records
from ..records.tracing import tracer_from_environment
from ..wire.sockets import peer_address, refuse_at_once
from ..wire.tls import TLSStream
from ..wire.transport import SocketTransport
from .admission import Admission
from .auth import KeySet, TokenChecker
from .connection import ServerContext, serve_connection, source_of
from .routing import CallRouting
from .shared_calls import SharedCalls
from .stats import ServerStats

log = logging.getLogger("gateway.server")

# Errors from accept() that mean "out of file descriptors/memory right now", not "broken";
# trio's serve_listeners waits and retries on the same set.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SLEEP: Final = 0.1  # seconds; long enough for a call to end and free an fd
# Each connection's task name, as trio would make it, made once rather than once a connection
# (a string held for the life of each call).
_CONNECTION_TASK: Final = f"{serve_connection.__module__}.{serve_connection.__qualname__}"


class Server:
    """A running server; `serve()` hands it to `task_status.started`."""

    def __init__(
        self,
        config: Config,
        processor: Processor,
        metrics: Metrics | None = None,
        notifier: systemd.Notifier | None = None,
        control: CallRouting | None = None,
        shared: SharedCalls | None = None,
    ) -> None:
        self.notifier = notifier or systemd.Notifier(None)
        self.metrics = Metrics() if metrics is None else metrics  # a private registry by default
        self.tls_context: ssl.SSLContext | None = None  # serving wss://; SIGHUP reloads its cert
        self.processor = processor
        self.control = control  # routes and webhooks (a reload may change the routes)
        self.pacer = Pacer()  # one timer for every call's send task
        self.auth = _token_checker(config)
        if control is not None:
            control.use_auth(self.auth)  # callbacks carry the same JWT as the media WebSocket
            control.use_metrics(self.metrics)  # its counts and latencies, in its own block
        self.stats = ServerStats()
        self.changes = systemd.Changes()  # live calls, readiness or draining: for STATUS=
        self.context = ServerContext(  # what every connection is served with
            config,
            processor,
            admission=Admission(config.allowed_networks, shared),
            stats=self.stats,
            auth=self.auth,
            pacer=self.pacer,
            timings=CallTimings(self.metrics.processing.observe, self.metrics.lateness.observe),
            call_durations=self.metrics.durations.observe,
            changes=self.changes,
            records=Records(
                self.metrics, tracer=tracer_from_environment() if config.tracing else None
            ),
            control=control,
        )
        self.metrics.follow(self.stats.totals)
        self.urls: list[str] = []
        self.draining = False
        self._accepting = trio.CancelScope()
        self._calls_scope: trio.CancelScope | None = None
        self.stopped = trio.Event()  # set when serve() returns

    @property
    def config(self) -> Config:
        return self.context.config

    @config.setter
    def config(self, config: Config) -> None:
        self.context.config = config  # a reload: read by every new connection
        self.changes.note()  # readiness may have moved (max_calls): report it again

    @property
    def reserved(self) -> int:
        return self.context.admission.reserved

    @reserved.setter
    def reserved(self, n: int) -> None:
        self.context.admission.reserved = n

    @property
    def reserved_by_source(self) -> Counter[str]:
        return self.context.admission.reserved_by_source

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

    def drain(self, grace: float | None = None, delay: float | None = None) -> None:
        """Not ready now; stop accepting `delay` seconds from now (`drain_delay`), and cancel
        the calls still live `grace` seconds after that."""
        grace = self.config.shutdown_grace if grace is None else grace
        delay = self.config.drain_delay if delay is None else delay
        self.draining = True
        close_at = trio.current_time() + delay
        if delay <= 0:
            self._accepting.cancel()  # now, not at the run loop's next look at deadlines
        else:
            self._accepting.deadline = min(self._accepting.deadline, close_at)
        assert self._calls_scope is not None
        self._calls_scope.deadline = min(self._calls_scope.deadline, close_at + grace)
        log.info(
            "draining: %d live call(s), listener closes in %.1f s, then grace %.1f s",
            self.live,
            delay,
            grace,
        )
        self.notifier.notify("STOPPING=1", *self._status())
        self.changes.note()

    def _status(self) -> tuple[str, ...]:
        return systemd.status_assignments(
            self.live, self.ready, self.draining, self.config.max_calls
        )

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
        if not self.context.admission.would_admit(self.config.max_calls):
            return False, f"at the limit of {self.config.max_calls} calls"
        return True, "ready"

    def stop_now(self) -> None:
        """Cancel every call at once (a second signal): no 1001 close for them either."""
        self.context.close_on_cancel = False
        self.drain(0, 0)

    async def _accept_loop(
        self, listener: trio.abc.Listener[Any], calls: trio.Nursery, spare: _SpareDescriptor
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                await self._out_of_descriptors(listener, exc, spare)
                continue
            self._admit_connection(stream, calls)

    def _admit_connection(self, stream: trio.abc.Stream, calls: trio.Nursery) -> None:
        """Hand the connection to its task, or close it at once, unread, when the pending
        handshakes are at their bounds (no await: the count holds however fast they come)."""
        config = self.config
        source = source_of(peer_address(stream))
        reason = self.context.admission.pending_refusal(
            source, config.max_pending_handshakes, config.max_pending_handshakes_per_source
        )
        if reason is not None:
            refuse_at_once(stream)
            self.stats.connections_refused[reason] += 1
            return
        if isinstance(stream, trio.SocketStream):
            stream = SocketTransport.from_socket_stream(stream)
            if self.tls_context is not None:  # its first read runs the TLS handshake
                stream = TLSStream(stream, self.tls_context, server_side=True)
        calls.start_soon(
            partial(serve_connection, stream, self.context, pending=True), name=_CONNECTION_TASK
        )

    async def _out_of_descriptors(
        self, listener: trio.abc.Listener[Any], exc: OSError, spare: _SpareDescriptor
    ) -> None:
        """accept() failed for want of descriptors (or memory): count it, and refuse the
        connection waiting in the queue with the spare descriptor; then let calls end."""
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.stats.accept_errors[name] += 1
        if self.stats.accept_errors[name] in (1, 10, 100) or not spare.held:
            log.error("accept failed (%s): refusing new connections while short", exc)
        refused = False
        if spare.release():
            # The connection that found no descriptor is waiting at the head of the queue.
            with trio.move_on_after(ACCEPT_RETRY_SLEEP):
                try:
                    stream = await listener.accept()
                except OSError:
                    pass
                else:
                    refuse_at_once(stream)
                    self.stats.connections_refused["no_fds"] += 1
                    refused = True
            spare.take()
        if not refused:
            await trio.sleep(ACCEPT_RETRY_SLEEP)  # let calls end and free descriptors
        # else on to the next one at once: the queue empties as fast as it fills


class _SpareDescriptor:
    """One descriptor held in reserve, so that when the process runs out, the accept loop can
    still take a waiting connection off the queue and close it at once."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.take()

    @property
    def held(self) -> bool:
        return self.fd is not None

    def take(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = None  # still short: the next failure tries again

    def release(self) -> bool:
        if self.fd is None:
            return False
        os.close(self.fd)
        self.fd = None
        return True

    def close(self) -> None:
        self.release()


def raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (one descriptor per call and per
    pending handshake); log both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("file descriptors: limit %s (soft = hard)", _limit(hard))
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("file descriptors: cannot raise %s to %s: %s", _limit(soft), _limit(hard), exc)
        return
    log.info("file descriptors: soft limit raised from %s to the hard limit %s", soft, _limit(hard))


def _limit(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)


def _token_checker(config: Config) -> TokenChecker | None:
    """With `acs_resource_id` set, the check of ACS's token; else no check."""
    if config.acs_resource_id is None:
        return None
    keys = KeySet(
        config.auth_key_set_url,
        refetch_interval=config.auth_key_refetch_interval,
        max_age=config.auth_key_max_age,
    )
    return TokenChecker(
        keys, audience=config.acs_resource_id, issuer=config.auth_issuer, leeway=config.auth_leeway
    )


def ssl_context(config: Config) -> ssl.SSLContext:
    """The server side of TLS from `tls_certfile`/`tls_keyfile` (both set)."""
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
    control: CallRouting | None = None,
    shared: SharedCalls | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve calls until drained (or cancelled). The one entry point for the daemon
    and the tests: `server = await nursery.start(serve, config, processor)`.

    `sockets`: already listening sockets to serve on instead of binding `host`/`port`.
    `control`: the control plane (routes, webhooks; `gateway.control.ControlPlane`).
    `shared`: a worker's gateway-wide count of live calls (`gateway.server.shared_calls`)."""
    raise_descriptor_limit()
    server = Server(config, processor, metrics, notifier, control, shared)
    listeners: list[trio.abc.Listener[Any]]
    if sockets:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    else:
        listeners = list(await trio.open_tcp_listeners(config.port, host=config.host))
    scheme = "ws"
    if config.tls_certfile is not None:
        server.tls_context = ssl_context(config)  # each accepted socket is wrapped in TLS
        scheme = "wss"
    server.urls.extend(_url(scheme, listener) for listener in listeners)
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
        server.metrics.flush()  # what the last calls counted, before a worker exits
        server.stopped.set()
    log.info("server stopped")


def _url(scheme: str, listener: trio.abc.Listener[Any]) -> str:
    assert isinstance(listener, trio.SocketListener)  # what open_tcp_listeners and sockets= make
    host, port = listener.socket.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


async def _serve_calls(
    server: Server, listeners: list[trio.abc.Listener[Any]], task_status: trio.TaskStatus[Server]
) -> None:
    """Accept until drained; return when the last call has ended."""
    async with trio.open_nursery() as calls:
        server._calls_scope = calls.cancel_scope
        spare = _SpareDescriptor()  # taken before we say we listen: a steady descriptor count
        try:
            with server._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(server._accept_loop, listener, calls, spare)
                    for url in server.urls:
                        log.info("listening on %s", url)
                    server.notifier.notify("READY=1", *server._status())
                    task_status.started(server)
        finally:
            spare.close()
        # Draining: refuse new connections at once (closed port) while live calls go on.
        for listener in listeners:
            await trio.aclose_forcefully(listener)
