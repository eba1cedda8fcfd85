"""Command line: `acs-media-gateway serve` (also `python -m gateway serve`), `simulate`, `show`.

Owns: flags, signals, and exit codes. Everything it configures goes through `gateway.config`.
Signals: the first SIGINT/SIGTERM drains (stop accepting, live calls get `shutdown_grace`
seconds, then are cancelled) and the process exits 0; a second signal cancels every call at
once. SIGHUP reloads the configuration (`gateway.ops.reload`).

Processes: with `workers` > 1 this process becomes the supervisor (`gateway.supervisor`) and
runs each worker as this same command line; a worker is recognised by the listening sockets
the supervisor passed it. Under systemd the sockets may come from socket activation, and
READY=1/STATUS=/STOPPING=1/WATCHDOG=1 go to `$NOTIFY_SOCKET` (`gateway.ops.systemd`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial

import prometheus_client
import trio

from . import __version__, logs, processors, show
from . import config as configuration
from .control import plane
from .errors import ConfigError
from .ops import systemd
from .ops.health import serve_health
from .ops.metrics import Metrics
from .ops.reload import reload_on_sighup
from .server import supervisor
from .server.serve import Server, serve
from .simulate import cli as simulate_cli

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acs-media-gateway",
        description="Media gateway for Azure Communication Services bidirectional audio streaming.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="accept ACS media-streaming connections")
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    run.add_argument("--port", type=int, help="port to listen on (default 8080; 0: any free port)")
    run.add_argument("--processor", help="processor for every call (default echo)")
    run.add_argument("--log-level", choices=configuration.LOG_LEVELS)
    run.add_argument("--log-format", choices=configuration.LOG_FORMATS)
    run.add_argument("--max-calls", type=int, help="live calls at most (default 1000)")
    run.add_argument("--shutdown-grace", type=float, help="seconds calls may go on after SIGTERM")
    run.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    run.add_argument("--health-port", type=int, help="health and metrics port (default: none)")
    simulate_cli.add_parser(commands)
    show.add_parser(commands)
    return parser


async def _watch_signals(server: Server, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if not server.draining:
            log.info("%s: draining", signal.Signals(signum).name)
            server.drain()
        else:
            log.warning("%s again: cancelling every call now", signal.Signals(signum).name)
            server.stop_now()


async def _run(
    config: configuration.Config,
    processor: processors.Processor,
    load: Callable[[], configuration.Config],
    sockets: Sequence[socket.socket],
    notifier: systemd.Notifier,
    worker: bool,
    control: plane.ControlPlane | None = None,
) -> None:
    # The process's global registry: it also carries prometheus-client's process collectors.
    # In a worker, $PROMETHEUS_MULTIPROC_DIR makes it write to files the supervisor sums.
    # No `_created` series: noise for our scrapers.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    metrics = Metrics(prometheus_client.REGISTRY)
    # Catch SIGTERM before serve() says it listens (READY=1): a stop that comes right after
    # must drain, not kill the process.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                partial(
                    serve,
                    config,
                    processor,
                    metrics=metrics,
                    sockets=sockets,
                    notifier=notifier,
                    control=control,
                )
            )
            await nursery.start(reload_on_sighup, server, load)
            # A worker's health is the supervisor's to serve (gateway.supervisor).
            if config.health_port is not None and not worker:
                health = partial(serve_health, metrics=metrics.exposition)
                await nursery.start(
                    health, config.health_host, config.health_port, server.readiness
                )
            nursery.start_soon(_watch_signals, server, signals)
            nursery.start_soon(supervisor.watch_supervisor, server.drain)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()


async def _supervise(
    config: configuration.Config,
    argv: Sequence[str],
    sockets: Sequence[socket.socket],
    notifier: systemd.Notifier,
) -> int:
    return await supervisor.Supervisor(config, argv, notifier, sockets).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return simulate_cli.run(args)
    if args.command == "show":
        return show.run(args)
    overrides = {
        "host": args.host,
        "port": args.port,
        "processor": args.processor,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "max_calls": args.max_calls,
        "shutdown_grace": args.shutdown_grace,
        "workers": args.workers,
        "health_port": args.health_port,
    }

    def load() -> configuration.Config:  # at start, and again on SIGHUP
        return configuration.load(args.config, overrides=overrides)

    try:
        config = load()
        logs.configure(config.log_level, config.log_format)
        processor = processors.load(config.processor, config.processor_options)
        control = plane.from_config(config, os.environ, processors.load)
    except ConfigError as exc:
        print(f"acs-media-gateway: {exc}", file=sys.stderr)
        return 2
    log.info("acs-media-gateway %s, processor %r", __version__, config.processor)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic GC's
    # full collections, whose pauses stall every call at once (docs/performance.md,
    # "Echo calls per process").
    gc.freeze()
    notifier = systemd.Notifier.from_environ()
    try:
        worker_sockets = supervisor.worker_sockets()
        inherited = worker_sockets or systemd.listen_fds()
        if inherited and not worker_sockets:
            log.info("serving %d socket(s) from systemd; host and port unused", len(inherited))
        if config.workers > 1 and not worker_sockets:
            return trio.run(_supervise, config, argv, inherited, notifier)
        trio.run(_run, config, processor, load, inherited, notifier, bool(worker_sockets), control)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 0
    except BaseExceptionGroup as group:
        failure, rest = group.split(OSError)
        if failure is None or rest is not None:
            raise
        log.error("cannot serve: %s", failure.exceptions[0])  # e.g. the port is taken
        return 1
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0
