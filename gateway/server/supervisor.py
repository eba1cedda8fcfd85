"""`serve --workers N`: N gateway processes on one port, supervised. One Trio process uses one core.

Owns: the worker processes and the listening sockets they share; never a call. The supervisor
binds the sockets before any worker starts and keeps its copies until it drains, so a worker
that dies (and its replacement) never changes the port and never loses the connections queued
in its socket:

- from systemd (`$LISTEN_FDS`): every worker accepts on the inherited sockets;
- otherwise one SO_REUSEPORT socket per worker on `host`/`port`, so the kernel spreads new
  connections evenly over the workers (a plain shared socket wakes them all for each one).

Each worker is `python -m gateway <the same arguments>`, told by environment variables which
fds to serve on (`WORKER_FDS_ENV`) and where to read for the supervisor's death
(`SUPERVISOR_FD_ENV`: a pipe that ends when the supervisor process does, and the worker then
drains). Workers run in their own session, so a terminal's Ctrl-C reaches them once, through
the supervisor.

Calls: `max_calls` is the whole gateway's. The workers share one count of live calls
(`gateway.server.shared_calls`, a file in the supervisor's private directory), and a worker
admits a call only while the sum is under the limit; the supervisor zeroes a dead worker's slot.

Health: with `health_port` set, the supervisor (not the workers) serves `/livez`, `/readyz`
and `/metrics`. `/readyz` is 200 exactly when a new call would be admitted, whichever worker
the kernel hands it to: not draining, every worker up (a connection for a worker that is
starting waits in its queue), and the shared count under `max_calls` as the workers last
reported it (each reports its limit again after every reload). `/metrics` has every worker's
metrics, summed by prometheus-client's multiprocess mode from `$PROMETHEUS_MULTIPROC_DIR` (a
fresh private directory for each run), and each process's `process_*` series, labelled by worker.

Workers talk to the supervisor with systemd's own notify protocol (`gateway.ops.systemd`): each
gets a private abstract `$NOTIFY_SOCKET` and a `$WATCHDOG_USEC`. The supervisor tells systemd
READY=1 once every worker is ready, STATUS= with the total of live calls, STOPPING=1 on drain,
and pings its own watchdog. A worker whose loop misses its watchdog is killed and restarted.

Signals: SIGTERM/SIGINT are forwarded to every worker (the first drains them, a second cancels
their calls); SIGHUP is forwarded as is. A worker that exits while not draining is restarted
after a back-off (doubling up to `RESTART_BACKOFF_MAX`; back to the first step after a worker
ran `HEALTHY_UPTIME`). The supervisor exits 0 once every worker has drained and exited 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import attrs
import trio

from ..config import Config
from ..ops import metrics, systemd
from ..ops.health import serve_health
from ..ops.registry import multiprocess_registry, worker_exited
from .serve import ssl_context
from .shared_calls import CALLS_FILE_ENV, SharedCalls

log = logging.getLogger("gateway.supervisor")

WORKER_FDS_ENV: Final = "ACS_MEDIA_GATEWAY_WORKER_FDS"  # comma-separated listening fds
WORKER_INDEX_ENV: Final = metrics.WORKER_INDEX_ENV  # the worker's slot (and metrics label)
SUPERVISOR_FD_ENV: Final = "ACS_MEDIA_GATEWAY_SUPERVISOR_FD"  # read end of the life-line pipe
RESTART_BACKOFF_FIRST: Final = 0.5  # seconds before the first restart of a dead worker
RESTART_BACKOFF_MAX: Final = 30.0  # a worker that keeps dying is retried this often at most
HEALTHY_UPTIME: Final = 10.0  # seconds a worker must run for its back-off to start over
WORKER_WATCHDOG_DEFAULT: Final = 30.0  # seconds a worker's loop may stall (outside systemd)
NOTIFY_DATAGRAM_MAX: Final = 4096  # systemd's own limit is larger; ours are a few lines
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
WORKER_SIGNALS: Final = (*STOP_SIGNALS, signal.SIGHUP)


@attrs.define(eq=False)
class Worker:
    """One worker slot: its sockets, its notify socket, and the process now filling it."""

    index: int
    sockets: list[socket.socket]
    notify_address: str  # '@...': abstract, nothing to clean up
    process: trio.Process | None = None
    ready: bool = False  # its last word: admitting calls
    serving: bool = False  # this process said READY=1 (it has its signal handlers)
    calls: int = 0
    max_calls: int | None = None  # the limit it last reported (it reloads on SIGHUP)
    started_at: float = 0.0
    last_ping: float | None = None  # None until its loop runs (start-up is not watched)
    restarts: int = 0
    exit_code: int | None = None


def reuseport_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """`count` groups of listening sockets on the same addresses, each socket with
    SO_REUSEPORT; port 0 is resolved once, by the first bind, for all of them."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    addresses = list(dict.fromkeys((family, addr[:2]) for family, _, _, _, addr in infos))
    groups: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for family, (address, wanted) in addresses:
            for group in groups:
                sock = socket.socket(family, socket.SOCK_STREAM)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, wanted))
                wanted = sock.getsockname()[1]
                sock.listen(socket.SOMAXCONN)
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


class Supervisor:
    """Runs and watches the workers; `run()` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        argv: Sequence[str],
        notifier: systemd.Notifier,
        inherited: Sequence[socket.socket] = (),
    ) -> None:
        self.config = config
        self.argv = list(argv)
        self.notifier = notifier
        self.inherited = list(inherited)
        self.draining = False
        self.workers: list[Worker] = []
        self.changes = systemd.Changes()
        self.all_exited = trio.Event()  # every worker's `_keep_running` has returned
        self._keeping = 0  # `_keep_running` tasks not yet returned
        self._drained = trio.Event()  # ends every restart back-off at once
        self._lifeline_read, self._lifeline_write = os.pipe()  # both close-on-exec
        # Prometheus multiprocess mode (gateway.ops.registry): every worker writes its metric
        # files here, and the supervisor aggregates them. Fresh and private for each run.
        self.metrics_dir = tempfile.mkdtemp(prefix="acs-media-gateway-metrics-")
        self.shared_calls = SharedCalls.create(self.metrics_dir, config.workers)
        interval = notifier.watchdog_interval
        self.worker_watchdog = 2 * interval if interval is not None else WORKER_WATCHDOG_DEFAULT

    # -- what the health endpoint and systemd see --

    @property
    def live(self) -> int:
        return self.shared_calls.total()

    @property
    def ready(self) -> bool:
        """Admitting calls: not draining, every worker up, the gateway under max_calls."""
        return self.readiness()[0]

    @property
    def max_calls(self) -> int:
        """The gateway's limit as the workers last reported it (a reload moves it)."""
        reported = [w.max_calls for w in self.workers if w.max_calls is not None]
        return min(reported) if reported else self.config.max_calls

    def readiness(self) -> tuple[bool, str]:
        """The health endpoint's /readyz for the whole service, and why not."""
        if self.draining:
            return False, "draining"
        waiting = [str(w.index) for w in self.workers if not _up(w)]
        if waiting:
            return False, f"worker(s) {', '.join(waiting)} not serving (starting or stopping)"
        if self.live >= self.max_calls:
            return False, f"at the limit of {self.max_calls} calls"
        return True, "ready"

    def _status(self) -> tuple[str, ...]:
        up = sum(w.process is not None and w.process.returncode is None for w in self.workers)
        state = "draining" if self.draining else "serving"
        return (
            f"STATUS={state}: {self.live} live call(s), {up}/{len(self.workers)} worker(s) up",
            f"X_ACS_CALLS={self.live}",
            f"X_ACS_READY={int(self.ready)}",
        )

    # -- running --

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> int:
        count = self.config.workers
        try:
            if self.config.tls_certfile is not None:
                ssl_context(self.config)  # a bad certificate or key fails here, not in workers
            if self.inherited:
                groups = [self.inherited] * count
                log.info("serving %d inherited socket(s) with %d workers", len(groups[0]), count)
            else:
                groups = reuseport_sockets(self.config.host, self.config.port, count)
            tag = f"acs-media-gateway/{os.getpid()}/{secrets.token_hex(4)}"
            self.workers = [Worker(i, group, f"@{tag}/{i}") for i, group in enumerate(groups)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals)
                if self.notifier.watchdog_interval is not None:
                    nursery.start_soon(
                        systemd.ping_watchdog, self.notifier, self.notifier.watchdog_interval
                    )
                async with trio.open_nursery() as workers:
                    self._keeping = len(self.workers)
                    for worker in self.workers:
                        await workers.start(self._listen_to, worker)
                        workers.start_soon(self._keep_running, worker)
                    workers.start_soon(self._watch_watchdogs)
                    workers.start_soon(self._report)
                    if self.config.health_port is not None:
                        # the workers' metrics, summed from their multiprocess files
                        registry = multiprocess_registry(self.metrics_dir)
                        health = partial(serve_health, registry=registry)
                        await nursery.start(
                            health, self.config.health_host, self.config.health_port, self.readiness
                        )
                    task_status.started(self)
                    await self.all_exited.wait()
                    workers.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            self._close_sockets()
            os.close(self._lifeline_write)
            os.close(self._lifeline_read)
            self.shared_calls.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        failed = [w for w in self.workers if w.exit_code != 0]
        for worker in failed:
            log.error("worker %d ended with exit code %s", worker.index, worker.exit_code)
        log.info("supervisor stopped")
        return 1 if failed else 0

    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("draining %d worker(s): %d live call(s)", len(self.workers), self.live)
        self.notifier.notify("STOPPING=1", *self._status())
        self._drained.set()
        self._signal_workers(signal.SIGTERM)
        # The workers stop accepting now; with our copies closed too, a new connection is
        # refused rather than queued for nobody (systemd's own sockets stay open in systemd).
        self._close_sockets()
        self.changes.note()

    def _close_sockets(self) -> None:
        for worker in self.workers:
            for sock in worker.sockets:
                sock.close()

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(*WORKER_SIGNALS) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: forwarded to the workers")
                    self._signal_workers(signum)
                elif not self.draining:
                    log.info("%s: draining", name)
                    self.drain()
                else:
                    log.warning("%s again: the workers cancel every call now", name)
                    self._signal_workers(signum)

    def _worker_environ(self, worker: Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("WATCHDOG_PID", None)
        env.update(
            {
                WORKER_FDS_ENV: ",".join(str(s.fileno()) for s in worker.sockets),
                WORKER_INDEX_ENV: str(worker.index),
                SUPERVISOR_FD_ENV: str(self._lifeline_read),
                "NOTIFY_SOCKET": worker.notify_address,
                "WATCHDOG_USEC": str(int(self.worker_watchdog * 1e6)),
                "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
                CALLS_FILE_ENV: self.shared_calls.path,
            }
        )
        return env

    async def _keep_running(self, worker: Worker) -> None:
        backoff = RESTART_BACKOFF_FIRST
        command = [sys.executable, "-m", "gateway", *self.argv]
        while not self.draining:
            worker.ready = worker.serving = False
            worker.started_at, worker.last_ping = trio.current_time(), None
            try:
                worker.process = await trio.lowlevel.open_process(
                    command,
                    env=self._worker_environ(worker),
                    pass_fds=[*(s.fileno() for s in worker.sockets), self._lifeline_read],
                    start_new_session=True,
                )
            except OSError:
                if self.draining:  # our sockets closed under the spawn: nothing to start
                    break
                raise
            log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
            if self.draining:  # the signal went out while this one was being spawned
                worker.process.send_signal(signal.SIGTERM)
            worker.exit_code = await worker.process.wait()
            worker_exited(worker.process.pid, self.metrics_dir)  # its live calls count no more
            self.shared_calls.clear(worker.index)
            if self.draining and not worker.serving and -worker.exit_code in STOP_SIGNALS:
                # stopped while still starting (before it could handle the signal): no call
                # was ever on it, so this is a clean stop
                log.info("worker %d stopped while starting", worker.index)
                worker.exit_code = 0
            worker.ready, worker.calls = False, 0
            self.changes.note()
            if self.draining:
                log.info("worker %d exited (%s)", worker.index, worker.exit_code)
                break
            if trio.current_time() - worker.started_at >= HEALTHY_UPTIME:
                backoff = RESTART_BACKOFF_FIRST
            log.error(
                "worker %d (pid %d) exited with %s; restarting in %.1f s",
                worker.index,
                worker.process.pid,
                _describe_exit(worker.exit_code),
                backoff,
            )
            with trio.move_on_after(backoff):
                await self._drained.wait()
            backoff = min(2 * backoff, RESTART_BACKOFF_MAX)
            worker.restarts += 1
        # Not "every process has exited": a worker still being spawned has no process yet, and
        # ending now would cancel its spawn and leave the new process behind.
        self._keeping -= 1
        if not self._keeping:
            self.all_exited.set()

    async def _listen_to(
        self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the worker's notify datagrams (bound before the worker starts)."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind("\0" + worker.notify_address[1:])
            task_status.started()
            while True:
                fields = systemd.parse(await sock.recv(NOTIFY_DATAGRAM_MAX))
                if "WATCHDOG" in fields:
                    worker.last_ping = trio.current_time()
                if fields.get("X_ACS_CALLS", "").isdigit():
                    worker.calls = int(fields["X_ACS_CALLS"])
                if "X_ACS_READY" in fields:
                    worker.ready = fields["X_ACS_READY"] == "1"
                if fields.get("X_ACS_MAX_CALLS", "").isdigit():
                    worker.max_calls = int(fields["X_ACS_MAX_CALLS"])
                if "STOPPING" in fields:
                    worker.ready = worker.serving = False
                if fields.get("READY") == "1":
                    worker.serving = True
                    log.info("worker %d ready", worker.index)
                self.changes.note()

    async def _watch_watchdogs(self) -> None:
        """Kill a worker whose event loop has not pinged within its watchdog time."""
        step = self.worker_watchdog / 4
        deadline = trio.current_time()
        while True:
            deadline += step
            await trio.sleep_until(deadline)
            now = trio.current_time()
            for worker in self.workers:
                process = worker.process
                if process is None or process.returncode is not None or worker.last_ping is None:
                    continue
                if now - worker.last_ping > self.worker_watchdog:
                    log.error(
                        "worker %d (pid %d) missed its watchdog (%.1f s): killing it",
                        worker.index,
                        process.pid,
                        self.worker_watchdog,
                    )
                    worker.last_ping = now  # one kill per stall
                    process.kill()

    async def _report(self) -> None:
        """READY=1 upstream once every worker is first ready; STATUS= as things change."""
        told_ready = False
        while True:
            if not told_ready and self.ready:
                told_ready = True
                log.info("all %d workers ready", len(self.workers))
                self.notifier.notify("READY=1", *self._status())
            else:
                self.notifier.notify(*self._status())
            if told_ready:
                await trio.sleep(systemd.STATUS_INTERVAL)
            await self.changes.wait()


def _up(worker: Worker) -> bool:
    """Running, said READY=1, and not stopping."""
    process = worker.process
    return process is not None and process.returncode is None and worker.serving


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def worker_calls() -> SharedCalls | None:
    """In a worker: the gateway-wide count of live calls (None when not a worker)."""
    index = os.environ.get(WORKER_INDEX_ENV, "")
    return SharedCalls.from_environ(int(index)) if index.isdigit() else None


def worker_sockets() -> list[socket.socket]:
    """In a worker: the listening sockets the supervisor passed (empty when not a worker)."""
    fds = os.environ.pop(WORKER_FDS_ENV, "")
    return [systemd.adopt_listening_socket(int(fd)) for fd in fds.split(",") if fd]


async def watch_supervisor(on_gone: Callable[[], object]) -> None:
    """In a worker: wait for the supervisor process to end (its life-line pipe reads EOF),
    then call `on_gone()` (drain). Returns at once when not a worker."""
    fd = os.environ.pop(SUPERVISOR_FD_ENV, "")
    if not fd:
        return
    async with trio.lowlevel.FdStream(int(fd)) as lifeline:
        while await lifeline.receive_some():
            pass
    log.warning("the supervisor is gone: draining")
    on_gone()
