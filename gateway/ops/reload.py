"""SIGHUP: re-read the configuration and apply what can change without dropping a call.

Owns: deciding what a reload changes, and applying it: the server's configuration (read by
every new connection and call), the log level and format, and the `[[routes]]` table (its
processors are loaded first: a route whose processor does not load rejects the reload; new
calls take the new routes, calls already answered keep theirs). Never: touches a live call (it
keeps the settings it started with; new calls get the new ones), or runs on a half-applied
configuration: a bad file is rejected whole, with a log line naming the setting, and the running
configuration stays.

Which settings may change is declared once, in `gateway.config_settings` (`hot` fields,
`RELOADABLE`). A changed setting that needs a restart (host, port, processor, ...) is named in
the log and left as it was. A gateway serving wss:// reads its certificate and key again on
every reload (renewed certificates are usually written over the same files): new TLS handshakes
get the new certificate, live calls keep their sessions. Turning TLS on or off needs a restart.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from .. import logs
from ..config import Config
from ..config_settings import RELOADABLE, SETTINGS
from ..errors import ConfigError
from .metrics import Metrics

log = logging.getLogger("gateway.reload")


class RouteTable(Protocol):
    """The control plane's routes (`gateway.control.ControlPlane`)."""

    def prepare_routes(self, config: Config) -> Callable[[], None]: ...  # raises ConfigError


class Reloadable(Protocol):
    """What a reload changes: the running server (`gateway.server.Server`)."""

    config: Config
    metrics: Metrics
    tls_context: ssl.SSLContext | None  # None: not serving TLS

    @property
    def control(self) -> RouteTable | None: ...  # None: no control plane


@attrs.frozen
class Reload:
    """The outcome of comparing the running configuration with a newly loaded one."""

    config: Config  # the running configuration with every reloadable change applied
    applied: tuple[str, ...]  # reloadable settings that changed
    ignored: tuple[str, ...]  # settings that changed but need a restart; kept as they were


def plan(running: Config, loaded: Config) -> Reload:
    changed = [n for n in SETTINGS if getattr(loaded, n) != getattr(running, n)]
    tls_switch = (running.tls_certfile is None) != (loaded.tls_certfile is None)
    restart = {n for n in changed if n not in RELOADABLE or (tls_switch and n in _TLS_FILES)}
    applied = tuple(n for n in changed if n not in restart)
    ignored = tuple(n for n in changed if n in restart)
    config = attrs.evolve(running, **{n: getattr(loaded, n) for n in applied})
    return Reload(config, applied, ignored)


_TLS_FILES = ("tls_certfile", "tls_keyfile")


def _reload_certificate(context: ssl.SSLContext, config: Config) -> None:
    """Load the certificate and key into the live context, after proving on a scratch context
    that they load and match: a failed `load_cert_chain` can leave a context half-changed."""
    assert config.tls_certfile is not None and config.tls_keyfile is not None
    scratch = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        scratch.load_cert_chain(config.tls_certfile, config.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_certfile/tls_keyfile: cannot load ({exc})") from None
    context.load_cert_chain(config.tls_certfile, config.tls_keyfile)


def _routes_need_restart(running: Config, change: Reload) -> Reload:
    applied = tuple(n for n in change.applied if n != "routes")
    config = attrs.evolve(change.config, routes=running.routes)
    return Reload(config, applied, (*change.ignored, "routes"))


def apply_logging(running: Config, config: Config) -> None:
    if (config.log_level, config.log_format) != (running.log_level, running.log_format):
        logs.configure(config.log_level, config.log_format)


def reload(target: Reloadable, load: Callable[[], Config]) -> Reload | None:
    """Load the configuration again and apply it to `target`; None if it was rejected."""
    switch_routes = None
    try:
        change = plan(target.config, load())
        if "routes" in change.applied:
            if target.control is None:  # routes turn the control plane on: a restart
                change = _routes_need_restart(target.config, change)
            else:  # their processors load now, or the whole reload is rejected
                switch_routes = target.control.prepare_routes(change.config)
        if target.tls_context is not None and change.config.tls_certfile is not None:
            _reload_certificate(target.tls_context, change.config)
    except ConfigError as exc:
        log.error("reload rejected, the running configuration stays: %s", exc)
        target.metrics.config_reloads.labels("rejected").inc()
        return None
    for name in change.ignored:
        log.warning(
            "reload: %s changed, but takes effect only after a restart (still %r)",
            name,
            getattr(target.config, name),
        )
    apply_logging(target.config, change.config)
    target.config = change.config
    if switch_routes is not None:
        switch_routes()  # new calls take the new routes; calls already answered keep theirs
    target.metrics.config_reloads.labels("applied").inc()
    log.info(
        "configuration reloaded: %s",
        ", ".join(f"{n}={getattr(change.config, n)!r}" for n in change.applied) or "no change",
    )
    return change


async def reload_on_sighup(
    target: Reloadable,
    load: Callable[[], Config],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload on every SIGHUP until cancelled (signals that arrive together reload once)."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            log.info("SIGHUP: reloading the configuration")
            reload(target, load)
