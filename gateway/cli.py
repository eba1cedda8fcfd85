"""Command line: `acs-media-gateway serve` (also `python -m gateway serve`), `simulate`, `dial`,
`show`, `fake-model`.

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
import errno
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

import prometheus_client
import trio

from . import __version__, logs, processors, show
from . import config as configuration
from .config_settings import LOG_FORMATS, LOG_LEVELS
from .control import command as dial_command
from .control import plane
from .errors import ConfigError, first_leaf
from .ops import collector, systemd
from .ops.health import serve_health
from .ops.metrics import Metrics
from .ops.reload import reload_on_sighup
from .server import supervisor
from .server.serve import Server, serve, ssl_context
from .simulate import cli as simulate_cli
from .simulate import fake_model as fake_model_cli

log = logging.getLogger("gateway")


class CannotListen(OSError):
    """A listening port could not be bound: which one, where, and why."""

    def __init__(self, what: str, host: str, port: int, source: str, cause: OSError) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(
            f"cannot listen on {where}, the {what} ({source}): {cause.strerror or cause}; "
            "choose another port, or stop what holds this one"
        )


async def _listening(what: str, setting: str, port: int, host: str, start: Any) -> Any:
    """`await start()`, with a bind failure turned into a `CannotListen` that names it."""
    try:
        return await start()
    except OSError as exc:
        raise CannotListen(what, host, port, _SOURCES.get(setting, "default"), exc) from exc


_SOURCES: dict[str, str] = {}  # where the listening settings came from (set by main)


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
    run.add_argument("--log-level", choices=LOG_LEVELS)
    run.add_argument("--log-format", choices=LOG_FORMATS)
    run.add_argument("--max-calls", type=int, help="live calls at most (default 1000)")
    run.add_argument("--shutdown-grace", type=float, help="seconds calls may go on after SIGTERM")
    run.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    run.add_argument("--health-port", type=int, help="health and metrics port (default: none)")
    run.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on the module path before the processor is imported (default .)",
    )
    simulate_cli.add_parser(commands)
    dial_command.add_parser(commands)
    show.add_parser(commands)
    fake_model_cli.add_parser(commands)
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
            started: list[Server] = []

            def readiness() -> tuple[bool, str]:
                return started[0].readiness() if started else (False, "starting")

            # The health port first: when it is taken, the media port was never announced.
            # A worker's health is the supervisor's to serve (gateway.supervisor).
            if config.health_port is not None and not worker:
                health = partial(serve_health, metrics=metrics.exposition)
                host, port = config.health_host, config.health_port
                await _listening(
                    "health port",
                    "health_port",
                    port,
                    host,
                    partial(nursery.start, health, host, port, readiness),
                )
            server: Server = await _listening(
                "media port",
                "port",
                config.port,
                config.host,
                partial(
                    nursery.start,
                    partial(
                        serve,
                        config,
                        processor,
                        metrics=metrics,
                        sockets=sockets,
                        notifier=notifier,
                        control=control,
                        shared=supervisor.worker_calls(),  # workers share max_calls
                    ),
                ),
            )
            started.append(server)
            await nursery.start(reload_on_sighup, server, load)
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
    try:
        return await supervisor.Supervisor(config, argv, notifier, sockets).run()
    except OSError as exc:  # alone (not in a group): binding the workers' media sockets
        source = _SOURCES.get("port", "default")
        raise CannotListen("media port", config.host, config.port, source, exc) from exc
    except BaseExceptionGroup as group:  # the supervisor's own health endpoint, once running
        taken = group.subgroup(lambda e: getattr(e, "errno", None) == errno.EADDRINUSE)
        if taken is None or config.health_port is None:
            raise
        host, port, source = config.health_host, config.health_port, _SOURCES["health_port"]
        raise CannotListen("health port", host, port, source, first_leaf(taken)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return simulate_cli.run(args)
    if args.command == "show":
        return show.run(args)
    if args.command == "dial":
        return dial_command.run(args)
    if args.command == "fake-model":
        return fake_model_cli.run(args)
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

    # As uvicorn's --app-dir: a processor module beside the configuration imports as is.
    sys.path.insert(0, os.path.abspath(args.app_dir))
    worker_index = os.environ.get(supervisor.WORKER_INDEX_ENV)
    try:
        config = load()
        for setting in ("port", "health_port"):
            _SOURCES[setting] = configuration.source_of(setting, args.config, None, overrides)
        logs.configure(
            config.log_level,
            config.log_format,
            worker=int(worker_index) if worker_index is not None else None,
        )
        _check_tls(config)
        processor = processors.load(config.processor, config.processor_options)
        control = plane.from_config(config, os.environ, processors.load)
    except ConfigError as exc:
        print(f"acs-media-gateway: {exc}", file=sys.stderr)
        return 2
    log.info("acs-media-gateway %s, processor %r", __version__, config.processor)
    # Everything loaded so far lives as long as the process, and what survives the older
    # generations' collections lives as long as its call: keep both out of the cyclic GC's
    # full collections, whose pauses stall every call at once (gateway.ops.collector).
    collector.install()
    notifier = systemd.Notifier.from_environ()
    try:
        worker_sockets = supervisor.worker_sockets()
        inherited = worker_sockets or systemd.listen_fds()
        if inherited and not worker_sockets:
            log.info("serving %d socket(s) from systemd; host and port unused", len(inherited))
        if not worker_sockets:  # the supervisor warns once for all its workers
            _warn_if_open(config, inherited)
        if config.workers > 1 and not worker_sockets:
            return trio.run(_supervise, config, argv, inherited, notifier)
        trio.run(_run, config, processor, load, inherited, notifier, bool(worker_sockets), control)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 0
    except BaseExceptionGroup as group:
        failure, rest = group.split(OSError)
        if failure is None or rest is not None:
            raise
        return _cannot_serve(first_leaf(failure))
    except OSError as exc:
        return _cannot_serve(exc)
    return 0


def _cannot_serve(exc: OSError) -> int:
    """A port that cannot be bound is a setting to change (2); anything else, a failure (1)."""
    log.error("cannot serve: %s", exc)
    return 2 if isinstance(exc, CannotListen) else 1


def _check_tls(config: configuration.Config) -> None:
    """A certificate and key that do not load fail the start, not the first connection."""
    if config.tls_certfile is None:
        return
    try:
        ssl_context(config)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls_certfile = {config.tls_certfile!r}, tls_keyfile = {config.tls_keyfile!r}: "
            f"cannot load them ({exc}); give a PEM certificate chain and its private key"
        ) from None


def _warn_if_open(config: configuration.Config, sockets: Sequence[socket.socket]) -> None:
    """Authentication off on an address others can reach: say so at every start."""
    if config.acs_resource_id is not None:
        return
    hosts = [s.getsockname()[0] for s in sockets] if sockets else [config.host]
    exposed = [h for h in hosts if not _is_loopback(h)]
    if exposed:
        log.warning(
            "authentication is OFF (acs_resource_id is not set) and the gateway listens on %s: "
            "anyone who can reach it can open calls; see docs/security.md",
            ", ".join(exposed),
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
