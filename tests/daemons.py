"""Real gateway processes for the operations tests (systemd, workers, nginx).

Owns: starting a gateway (or anything that execs one) as a subprocess, reading its log, a real
`$NOTIFY_SOCKET` to listen on, and a stand-in for systemd's socket holder. Every process is
killed, with any workers it started, when its context exits, whatever happened.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trustme

from gateway.ops import systemd

SERVE = [sys.executable, "-m", "gateway", "serve"]
STARTUP_TIMEOUT = 20  # seconds: Python start-up on a loaded 2-core machine
CLEAN_STOP_TIMEOUT = 5  # seconds a process gets to exit on SIGTERM before SIGKILL
# Puts the fd given first at fd 3 and execs the rest with LISTEN_FDS/LISTEN_PID for itself:
# what systemd does for a service whose socket it holds.
AS_SYSTEMD = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd) if fd != 3 else None\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tools that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them (Trio spawns from a
    worker thread, and /proc lists children per thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(found)


class Gateway:
    """A running process and every line it has logged."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log: list[str] = []
        self.url = ""
        self._lines = trio.lowlevel.ParkingLot()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.log.append(text)
                found = re.search(r"listening on (wss?://\S+)", text)
                if found and not self.url:
                    self.url = found.group(1)
            self._lines.unpark_all()
        self._lines.unpark_all()

    async def wait_log(self, pattern: str, count: int = 1, limit: float = 20) -> list[str]:
        """Wait until `count` lines match `pattern`; the matching lines."""
        with trio.fail_after(limit):
            while True:
                found = [line for line in self.log if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                if self.process.returncode is not None:
                    raise AssertionError(f"exited before logging {pattern!r}:\n" + self.text)
                await self._lines.park()

    async def wait_exit(self, limit: float = 20) -> int:
        with trio.fail_after(limit):
            return await self.process.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.log)

    def workers(self) -> list[int]:
        return children(self.process.pid)


@asynccontextmanager
async def gateway_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    listening: bool = True,
) -> AsyncIterator[Gateway]:
    """Start `command`; with `listening`, wait for its "listening on" line first."""
    environ = {**os.environ, **(env or {})}
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
        if env is None or name not in env:
            environ.pop(name, None)
    process = await trio.lowlevel.open_process(
        list(command), stderr=subprocess.PIPE, env=environ, pass_fds=list(pass_fds)
    )
    gateway = Gateway(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.read_stderr)
            if listening:
                await gateway.wait_log("listening on", limit=STARTUP_TIMEOUT)
            yield gateway
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:  # a clean stop first: the supervisor tidies up
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(CLEAN_STOP_TIMEOUT):
                    await process.wait()
            kill_tree(process.pid)
            await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()  # our end of its pipe, now rather than at GC


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (workers run in their own session)."""
    for child in children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class NotifySocket:
    """A real `$NOTIFY_SOCKET`: a bound AF_UNIX datagram socket collecting what is sent."""

    def __init__(self, address: str) -> None:
        self.address = address  # a path, or '@name' (abstract)
        self.messages: list[dict[str, str]] = []
        self._arrivals = trio.lowlevel.ParkingLot()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            bind_to = "\0" + self.address[1:] if self.address.startswith("@") else self.address
            await sock.bind(bind_to)
            task_status.started()
            while True:
                self.messages.append(systemd.parse(await sock.recv(65536)))
                self._arrivals.unpark_all()

    def seen(self, name: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in self.messages if name in m and (value is None or m[name] == value)]

    async def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], limit: float = 20
    ) -> dict[str, str]:
        """The first message (already received or to come) for which `predicate` holds."""
        with trio.fail_after(limit):
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                await self._arrivals.park()


@asynccontextmanager
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        yield listener
        nursery.cancel_scope.cancel()


def held_listening_socket() -> socket.socket:
    """A listening socket on 127.0.0.1, port 0, as a systemd .socket unit holds one."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def as_systemd(sock: socket.socket, *gateway_args: str) -> list[str]:
    """The command that runs the gateway with `sock` passed as systemd would (fd 3)."""
    return [sys.executable, "-c", AS_SYSTEMD, str(sock.fileno()), "-m", "gateway", *gateway_args]


TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"  # the st column of /proc/net/tcp


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets on local `port` in `state` (read from /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connections_per_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """How many established connections on `port` each process holds."""
    established = tcp_sockets(port, TCP_ESTABLISHED)
    return {pid: len(socket_inodes(pid) & established) for pid in pids}


POLL_INTERVAL = 0.02  # seconds between looks at state only the kernel can show (/proc)


async def poll_until(predicate: Callable[[], bool], limit: float = 20) -> None:
    """Wait for a condition on another process's state, which sends no event we could await."""
    with trio.fail_after(limit):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(POLL_INTERVAL)


def throwaway_tls(directory: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 from a throwaway CA (trustme): (certfile, keyfile, a client
    context that trusts it)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return certfile, keyfile, client
