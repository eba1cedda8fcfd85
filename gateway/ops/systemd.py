"""systemd's side channels, written out by hand (each is a few lines): sd_notify and sockets.

Owns: the notify protocol (`READY=1`, `STATUS=`, `STOPPING=1`, `WATCHDOG=1` datagrams to
`$NOTIFY_SOCKET`, a filesystem path or an abstract '@' name) and socket activation
(`$LISTEN_FDS` / `$LISTEN_PID`: listening sockets handed over from fd 3 on). Never: opens a
listening socket itself, or closes one it was handed (the socket is systemd's: a restart must
find its queue intact).

Every function is a no-op outside systemd (no `$NOTIFY_SOCKET`, no `$LISTEN_FDS`), so the
gateway behaves the same when run by hand. A failed notification is logged, never raised: the
service manager going away must not take calls down with it.

`--workers N` reuses the same protocol one level down: the supervisor gives each worker its
own `$NOTIFY_SOCKET` and reads the workers' messages (`gateway.supervisor`). For it a worker's
status update also carries `X_ACS_CALLS=` (live calls), `X_ACS_READY=` (admitting calls) and
`X_ACS_MAX_CALLS=` (its limit, after every reload); systemd ignores variables it does not know.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Final

import trio

log = logging.getLogger("gateway.systemd")

SD_LISTEN_FDS_START: Final = 3  # sd_listen_fds(3): inherited sockets start at fd 3
STATUS_INTERVAL: Final = 1.0  # seconds between STATUS= updates: systemd logs none, but it is IPC


class Notifier:
    """The `$NOTIFY_SOCKET` client. `Notifier.from_environ()` is disabled when unset."""

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of `VAR=value` lines; True if it was sent."""
        if self.address is None:
            return False
        # '@name' is Linux's abstract namespace: a leading NUL byte, no file.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a datagram fits or fails; never stall the loop
            self._sock.sendto("\n".join(assignments).encode(), address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Changes:
    """A flag a reporter waits on: `note()` after any change; `wait()` returns once there is
    one it has not seen (changes made while the reporter was busy are never lost)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def note(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


def status_assignments(
    live: int, ready: bool, draining: bool, max_calls: int | None = None
) -> tuple[str, ...]:
    """STATUS= for `systemctl status`, plus the machine-readable fields the supervisor reads
    (`X_ACS_MAX_CALLS`: the limit now in force, which a reload may move)."""
    if draining:
        text = f"draining: {live} live call(s)"
    else:
        text = f"serving {live} live call(s)" + ("" if ready else ", at the call limit")
    limit = () if max_calls is None else (f"X_ACS_MAX_CALLS={max_calls}",)
    ready_now = int(ready and not draining)
    return (f"STATUS={text}", f"X_ACS_CALLS={live}", f"X_ACS_READY={ready_now}", *limit)


def parse(datagram: bytes) -> dict[str, str]:
    """The `VAR=value` lines of one notify datagram (what systemd itself reads)."""
    fields: dict[str, str] = {}
    for line in datagram.decode(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name] = value
    return fields


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of `$WATCHDOG_USEC`), or None when not asked.

    `$WATCHDOG_PID`, when set, names the process the watchdog is meant for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return seconds / 2 if seconds > 0 else None


async def ping_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send WATCHDOG=1 every `interval` seconds from this event loop, on absolute deadlines:
    a loop stuck for longer than the watchdog timeout stops the pings, and systemd (or the
    supervisor) restarts the process."""
    task_status.started()
    deadline = trio.current_time()
    while True:
        notifier.notify("WATCHDOG=1")
        deadline += interval
        await trio.sleep_until(deadline)


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed (sd_listen_fds), as blocking-agnostic socket objects.

    Reads and then removes `$LISTEN_FDS`, `$LISTEN_PID` and `$LISTEN_FDNAMES` (so a child
    process does not take them for its own), and marks the fds close-on-exec. Empty when the
    variables are absent or meant for another process."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not count or pid != str(os.getpid()):
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(adopt_listening_socket(fd))
    return sockets


def adopt_listening_socket(fd: int) -> socket.socket:
    """A socket object for an inherited listening fd (its family and type read from the fd)."""
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise OSError(f"inherited fd {fd} is not a listening stream socket")
    return sock
