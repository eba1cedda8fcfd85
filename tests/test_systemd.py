"""systemd: the notify protocol against a real NOTIFY_SOCKET, socket activation with a real
inherited socket, a rolling restart that refuses no connection, and the units themselves."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import Config
from gateway.ops import systemd
from gateway.processors import load
from gateway.server.serve import Server, serve
from gateway.testing import open_gateway, simulated_call
from tests.conftest import task_count
from tests.daemons import (
    SERVE,
    as_systemd,
    free_port,
    gateway_process,
    held_listening_socket,
    notify_socket,
    poll_until,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ECHO_PCM = bytes(range(256)) * 5  # 1280 bytes: two frames


@asynccontextmanager
async def serving(notifier: systemd.Notifier | None, **settings: Any) -> AsyncIterator[Server]:
    """An in-process gateway on 127.0.0.1, port 0, telling `notifier` what systemd hears."""
    config = Config(**{"host": "127.0.0.1", "port": 0, **settings})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, load("echo"), notifier=notifier))
        try:
            yield server
        finally:
            if not server.stopped.is_set():
                server.stop_now()
            if notifier is not None:
                notifier.close()  # its socket, now, not at some later garbage collection


async def echo_round_trip(url: str) -> None:
    async with simulated_call(url) as call:
        await call.stream(ECHO_PCM, realtime=False)
        with trio.fail_after(10):
            await call.wait_for_audio(len(ECHO_PCM))
        assert call.received_pcm[: len(ECHO_PCM)] == ECHO_PCM


# -- the notify protocol --


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_one_datagram_of_assignments(tmp_path, abstract):
    address = f"@acs-test-{os.getpid()}-{tmp_path.name}" if abstract else str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + address[1:] if abstract else address)
        notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": address})
        assert notifier.notify("READY=1", "STATUS=serving 0 live call(s)")
        receiver.settimeout(5)
        datagram = receiver.recv(4096)
        notifier.close()
    assert datagram == b"READY=1\nSTATUS=serving 0 live call(s)"
    assert systemd.parse(datagram) == {"READY": "1", "STATUS": "serving 0 live call(s)"}


def test_notify_outside_systemd_does_nothing_and_a_gone_socket_is_not_fatal(tmp_path, caplog):
    assert not systemd.Notifier.from_environ({}).notify("READY=1")
    gone = systemd.Notifier(str(tmp_path / "nobody-listens.sock"))
    assert not gone.notify("READY=1")
    gone.close()
    assert "sd_notify" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec():
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": pid}) == 1.5
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({}) is None
    # without a socket to ping, no watchdog at all
    assert systemd.Notifier.from_environ({"WATCHDOG_USEC": "10"}).watchdog_interval is None


class RecordingNotifier(systemd.Notifier):
    """A notifier that records (time, assignments) instead of sending them."""

    def __init__(self, watchdog_interval: float | None = None) -> None:
        super().__init__("@recording", watchdog_interval)
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append((trio.current_time(), assignments))
        return True


async def test_watchdog_pings_on_absolute_deadlines(autojump_clock):
    notifier = RecordingNotifier()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(systemd.ping_watchdog, notifier, 5.0)
        await trio.sleep(22)
        nursery.cancel_scope.cancel()
    times = [round(t - start, 6) for t, sent in notifier.sent if sent == ("WATCHDOG=1",)]
    assert times == [0, 5, 10, 15, 20]


async def test_the_server_pings_the_watchdog_from_its_event_loop(autojump_clock):
    notifier = RecordingNotifier(watchdog_interval=5.0)
    start = trio.current_time()
    async with serving(notifier):
        await trio.sleep(12)
    pings = [round(t - start, 6) for t, sent in notifier.sent if sent == ("WATCHDOG=1",)]
    assert pings == [0, 5, 10]


async def test_status_is_rate_limited_and_never_loses_the_last_change(autojump_clock):
    notifier = RecordingNotifier()
    async with serving(notifier) as server:
        assert notifier.sent[-1][1][0] == "READY=1"
        for live in (1, 2, 3, 2):  # four changes within one interval
            server.reserved = live
            server.changes.note()
            await trio.sleep(0.1)
        await trio.sleep(systemd.STATUS_INTERVAL * 3)
        calls = [dict(a.split("=", 1) for a in sent)["X_ACS_CALLS"] for _, sent in notifier.sent]
        # READY (0), the first change (1) at once, then only the latest (2) after the interval
        assert calls == ["0", "1", "2"]
        server.reserved = 0


async def test_server_tells_systemd_ready_status_and_stopping(tmp_path):
    async with notify_socket(tmp_path) as listener:
        async with serving(systemd.Notifier(listener.address), shutdown_grace=10) as server:
            ready = await listener.wait_for(lambda m: "READY" in m)
            assert ready["X_ACS_CALLS"] == "0" and ready["X_ACS_READY"] == "1"
            async with simulated_call(server.urls[0]) as call:
                await listener.wait_for(lambda m: m.get("X_ACS_CALLS") == "1")
                assert server.ready
                server.drain()
                assert not server.ready  # the health endpoint's readiness
                stopping = await listener.wait_for(lambda m: "STOPPING" in m)
                assert stopping["X_ACS_READY"] == "0"
                assert stopping["STATUS"].startswith("draining: 1 live call")
                await call.stream(ECHO_PCM, realtime=False)  # the live call goes on
                with trio.fail_after(5):
                    await call.wait_for_audio(len(ECHO_PCM))
        assert server.stopped.is_set()


async def test_readiness_is_false_at_the_call_limit(tmp_path):
    async with notify_socket(tmp_path) as listener:
        async with serving(systemd.Notifier(listener.address), max_calls=1) as server:
            async with simulated_call(server.urls[0]):
                full = await listener.wait_for(lambda m: m.get("X_ACS_CALLS") == "1")
                assert full["X_ACS_READY"] == "0" and "at the call limit" in full["STATUS"]
                assert not server.ready
            await listener.wait_for(lambda m: m.get("X_ACS_CALLS") == "0" and "READY" not in m)
            assert server.ready


async def test_serve_takes_an_already_listening_socket():
    sock = held_listening_socket()
    port = sock.getsockname()[1]
    config = Config(host="127.0.0.1", port=1)  # unused: the socket is given
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, load("echo"), sockets=[sock]))
        assert server.urls == [f"ws://127.0.0.1:{port}"]
        await echo_round_trip(server.urls[0])
        server.stop_now()
    assert sock.fileno() == -1  # closed with the server (never shut down: see server.py)


def test_an_inherited_fd_that_is_not_a_listening_socket_is_refused():
    with socket.socket() as unbound:
        with pytest.raises(OSError, match="not a listening stream socket"):
            systemd.adopt_listening_socket(unbound.fileno())
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"}
    assert systemd.listen_fds(env) == []  # meant for another process
    assert env == {}  # and never passed on to a child


# -- real processes --


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd")
async def test_socket_activation_with_systemd_socket_activate(tmp_path):
    port = free_port()
    async with notify_socket(tmp_path) as listener:
        command = [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "-E",
            "NOTIFY_SOCKET",
            *SERVE,
            "--shutdown-grace",
            "10",
        ]
        async with gateway_process(
            command, env={"NOTIFY_SOCKET": listener.address}, listening=False
        ) as gateway:
            # systemd-socket-activate starts the gateway on the first connection: that
            # connection waits in the inherited socket's queue and is served.
            await gateway.wait_log(f"Listening on 127.0.0.1:{port}")
            await echo_round_trip(f"ws://127.0.0.1:{port}")
            await gateway.wait_log("serving 1 socket\\(s\\) from systemd")
            assert gateway.url == f"ws://127.0.0.1:{port}"
            await listener.wait_for(lambda m: m.get("READY") == "1")
            await echo_round_trip(gateway.url)
            gateway.process.send_signal(signal.SIGTERM)
            await listener.wait_for(lambda m: "STOPPING" in m)
            assert await gateway.wait_exit() == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_rolling_restart_refuses_no_connection_and_drops_no_call(tmp_path, workers):
    """systemd restarting a socket-activated service: the old process drains while the socket
    (held here, as systemd holds it) queues new connections for the next process."""
    held = held_listening_socket()
    url = f"ws://127.0.0.1:{held.getsockname()[1]}"
    args = ["serve", "--shutdown-grace", "20", "--workers", str(workers)]
    pcm = bytes(range(200)) * 32 * 8  # 1.28 s of audio, real time
    async with notify_socket(tmp_path) as listener:
        env = {"NOTIFY_SOCKET": listener.address}
        async with gateway_process(
            as_systemd(held, *args), env=env, pass_fds=[held.fileno()]
        ) as old:
            await listener.wait_for(lambda m: m.get("READY") == "1")
            arrivals: list[str] = []
            all_served = trio.Event()

            async def call_during_restart(name: str) -> None:
                # connects while the old process drains; served by the new one
                await echo_round_trip(url)
                arrivals.append(name)
                if len(arrivals) == 3:
                    all_served.set()

            async with trio.open_nursery() as nursery:
                async with simulated_call(url) as live:
                    nursery.start_soon(live.stream, pcm)
                    await trio.sleep(0.3)
                    old.process.send_signal(signal.SIGTERM)  # systemctl restart: stop ...
                    await listener.wait_for(lambda m: "STOPPING" in m)
                    # every process of the old service has stopped accepting
                    await old.wait_log("gateway.server draining", count=workers)
                    for n in range(3):
                        nursery.start_soon(call_during_restart, f"new-{n}")
                    with trio.fail_after(10):
                        await live.wait_for_audio(len(pcm))
                    assert not live.closed.is_set()  # the live call was never cut
                    assert live.received_pcm == pcm
                assert await old.wait_exit() == 0  # ... (the old process exits once drained)
                assert arrivals == []  # nobody accepted them while draining
                async with gateway_process(
                    as_systemd(held, *args), env=env, pass_fds=[held.fileno()]
                ):  # ... then start
                    with trio.fail_after(20):
                        await all_served.wait()
    held.close()
    assert sorted(arrivals) == ["new-0", "new-1", "new-2"]


PR_SET_MDWE = 65
# Turn on the kernel's "memory deny write-execute" (what MemoryDenyWriteExecute=yes enforces,
# inherited across exec), prove it holds, then exec the rest of the command line.
MDWE_SHIM = (
    "import ctypes, mmap, os, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(3)\n"
    "try:\n"
    "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    "    sys.exit(4)\n"
    "except PermissionError:\n"
    "    pass\n"
    "if len(sys.argv) > 1:\n"
    "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


async def test_the_gateway_runs_under_memory_deny_write_execute():
    """The unit sets MemoryDenyWriteExecute=yes: calls must work when W+X memory is refused."""
    probe = await trio.run_process([sys.executable, "-c", MDWE_SHIM], check=False)
    if probe.returncode != 0:
        pytest.skip(f"this kernel cannot deny write-execute memory (PR_SET_MDWE: {probe})")
    command = [sys.executable, "-c", MDWE_SHIM, "-m", "gateway", "serve", "--workers", "2"]
    command += ["--host", "127.0.0.1", "--port", "0"]
    async with gateway_process(command) as gateway:
        for _ in range(3):
            await echo_round_trip(gateway.url)
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0


# -- the units --


def _units_for_analysis(tmp_path: Path) -> list[Path]:
    """The shipped units, with ExecStart pointing at this environment's console script
    (verify checks that the program exists)."""
    program = Path(sys.executable).parent / "acs-media-gateway"
    if not program.exists():
        pytest.skip(f"no console script at {program}")
    units = []
    for name in ("acs-media-gateway.service", "acs-media-gateway.socket"):
        text = (DEPLOY / name).read_text()
        text = text.replace("/opt/acs-media-gateway/bin/acs-media-gateway", str(program))
        (tmp_path / name).write_text(text)
        units.append(tmp_path / name)
    return units


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    units = _units_for_analysis(tmp_path)
    result = _systemd_analyze("verify", *map(str, units))
    if "Failed to" in result.stderr and "manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


def test_the_service_is_hardened(tmp_path):
    service = _units_for_analysis(tmp_path)[0]
    result = _systemd_analyze("security", "--offline=true", "--threshold=20", str(service))
    assert result.returncode == 0, result.stderr
    exposure = float(result.stdout.split("Overall exposure level for")[1].split(":")[1].split()[0])
    assert exposure <= 2.0, result.stdout  # systemd's scale: 0 (locked down) to 10; <= 2 "OK"
    text = service.read_text()
    for line in (
        "Type=notify",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "KillMode=mixed",
    ):
        assert line in text
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    grace = Config().shutdown_grace
    assert float(settings["TimeoutStopSec"]) > grace
    assert float(settings["WatchdogSec"]) > 0


async def test_a_connection_accepted_before_the_drain_is_served():
    """Workers get the drain signal a moment apart (and so may one process, mid-upgrade): a
    connection the server accepted before it began draining is a call it took on."""
    async with open_gateway(shutdown_grace=10) as server:
        tasks = task_count()
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await poll_until(lambda: task_count() > tasks)  # accepted; it awaits the upgrade
        server.drain()
        async with simulated_call(stream=stream) as call:
            await call.stream(ECHO_PCM, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(ECHO_PCM))
            assert call.received_pcm == ECHO_PCM
        assert server.stats.calls_refused == 0 and server.stats.calls_accepted == 1


def test_process_metrics_survive_a_hidden_proc_stat(monkeypatch):
    """The unit's ProcSubset=pid hides /proc/stat: prometheus-client's process collector then
    yields nothing, the gateway's still has every process_* series."""
    import builtins

    from prometheus_client import CollectorRegistry
    from prometheus_client import ProcessCollector as ClientProcessCollector

    from gateway.ops.process_metrics import ProcessCollector

    real_open = builtins.open

    def hidden(path, *args, **kwargs):  # what ProcSubset=pid does
        if str(path) == "/proc/stat":
            raise PermissionError(13, "hidden", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", hidden)
    theirs = CollectorRegistry()
    ClientProcessCollector(registry=theirs)
    assert not [s for family in theirs.collect() for s in family.samples]
    ours = CollectorRegistry()
    ours.register(ProcessCollector())
    values = {s.name: s.value for family in ours.collect() for s in family.samples}
    assert values["process_resident_memory_bytes"] > 0
    assert values["process_open_fds"] > 0
    assert values["process_cpu_seconds_total"] > 0
    assert {"process_virtual_memory_bytes", "process_max_fds", "process_start_time_seconds"} <= set(
        values
    )
