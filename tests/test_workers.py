"""`serve --workers N`: real worker processes sharing one port, supervised."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio_websocket

from gateway.server.supervisor import reuseport_sockets
from gateway.testing import SimulatedCall, simulated_call
from tests.daemons import (
    SERVE,
    TCP_LISTEN,
    Gateway,
    connections_per_process,
    gateway_process,
    notify_socket,
    poll_until,
    tcp_sockets,
    throwaway_tls,
)
from tests.test_health import http, samples

WORKERS = [*SERVE, "--host", "127.0.0.1", "--port", "0", "--workers", "2"]
MAX_CALLS_TO_REACH_BOTH = 24  # the kernel hashes each connection to a worker: 2**-23 to miss
PCM = bytes(range(200)) * 16  # 0.2 s


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def live_workers(gateway: Gateway, count: int = 2) -> list[int]:
    """The worker pids once `count` of them are up."""
    await poll_until(lambda: len(gateway.workers()) == count)
    return gateway.workers()


@asynccontextmanager
async def calls_on_every_worker(gateway: Gateway) -> AsyncIterator[list[SimulatedCall]]:
    """Open calls (each echoes once) until every worker holds at least one; yield them open."""
    pids = await live_workers(gateway)
    port = port_of(gateway)
    async with AsyncExitStack() as stack:
        calls: list[SimulatedCall] = []
        for _ in range(MAX_CALLS_TO_REACH_BOTH):
            call = await stack.enter_async_context(simulated_call(gateway.url))
            await call.stream(PCM, realtime=False)
            with trio.fail_after(10):
                await call.wait_for_audio(len(PCM))
            assert call.received_pcm == PCM
            calls.append(call)
            held = connections_per_process(pids, port)
            if all(held.values()):
                break
        assert all(held.values()), f"every call went to one worker: {held}"
        assert sum(held.values()) == len(calls)
        yield calls


def test_reuseport_sockets_share_one_port():
    groups = reuseport_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for group in groups for s in group}
        assert len(groups) == 3 and all(len(g) == 1 for g in groups)
        assert len(ports) == 1 and 0 not in ports
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for g in groups for s in g)
    finally:
        for group in groups:
            for sock in group:
                sock.close()


async def test_calls_are_served_by_both_workers_and_a_killed_worker_is_restarted():
    async with gateway_process(WORKERS) as gateway:
        async with calls_on_every_worker(gateway):
            pass
        victim, survivor = await live_workers(gateway)
        os.kill(victim, signal.SIGKILL)
        await gateway.wait_log("exited with signal SIGKILL; restarting")
        await gateway.wait_log("worker \\d ready", count=3)
        replacement = [p for p in await live_workers(gateway) if p != survivor]
        assert len(replacement) == 1 and replacement[0] != victim
        # both workers serve again: the replacement took over the dead one's socket
        async with calls_on_every_worker(gateway):
            pass
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0


async def test_sigterm_drains_every_worker_and_exits_zero(tmp_path):
    async with notify_socket(tmp_path) as listener:
        env = {"NOTIFY_SOCKET": listener.address}
        async with gateway_process([*WORKERS, "--shutdown-grace", "20"], env=env) as gateway:
            ready = await listener.wait_for(lambda m: m.get("READY") == "1")
            assert "2/2 worker(s) up" in ready["STATUS"]
            port = port_of(gateway)
            async with calls_on_every_worker(gateway) as calls:
                second = PCM * 5  # 1 s, in real time, on every call, while draining
                async with trio.open_nursery() as nursery:
                    for call in calls:
                        nursery.start_soon(call.stream, second)
                    await trio.sleep(0.2)
                    gateway.process.send_signal(signal.SIGTERM)
                    stopping = await listener.wait_for(lambda m: "STOPPING" in m)
                    assert stopping["X_ACS_READY"] == "0"
                    await gateway.wait_log("gateway.server draining", count=2)
                    await poll_until(lambda: not tcp_sockets(port, TCP_LISTEN))  # all closed
                    with pytest.raises((OSError, trio_websocket.HandshakeError)):
                        async with simulated_call(gateway.url):
                            pass
                for call in calls:
                    with trio.fail_after(10):
                        await call.wait_for_audio(len(PCM) + len(second))
                    assert not call.closed.is_set()  # no live call was cut
                    assert call.received_pcm == PCM + second
            assert await gateway.wait_exit() == 0
        assert gateway.text.count("exited (0)") == 2
        for index in (0, 1):  # every worker's lines say which worker wrote them
            assert re.search(rf"gateway.server draining: .* \[worker={index}\]", gateway.text)


async def test_a_worker_whose_loop_is_stuck_is_killed_and_restarted(tmp_path):
    async with notify_socket(tmp_path) as listener:
        # what systemd sets with WatchdogSec=2: the supervisor gives each worker the same time
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"}
        async with gateway_process(WORKERS, env=env) as gateway:
            await listener.wait_for(lambda m: m.get("READY") == "1")
            await listener.wait_for(lambda m: m.get("WATCHDOG") == "1")  # its own loop pings
            stuck, _ = await live_workers(gateway)
            os.kill(stuck, signal.SIGSTOP)  # the loop no longer runs: no WATCHDOG=1
            await gateway.wait_log(f"pid {stuck}\\) missed its watchdog", limit=20)
            await gateway.wait_log("exited with signal SIGKILL; restarting")
            await gateway.wait_log("worker \\d ready", count=3)
            assert stuck not in gateway.workers()
            async with calls_on_every_worker(gateway):
                pass


async def test_workers_serve_wss_directly(tmp_path):
    certfile, keyfile, client = throwaway_tls(tmp_path)
    tls = ["--config", str(tmp_path / "gateway.toml")]
    (tmp_path / "gateway.toml").write_text(
        f'tls_certfile = "{certfile}"\ntls_keyfile = "{keyfile}"\n'
    )
    async with gateway_process([*WORKERS, *tls]) as gateway:
        assert gateway.url.startswith("wss://127.0.0.1:")
        await live_workers(gateway)
        for _ in range(4):
            async with simulated_call(gateway.url, ssl_context=client) as call:
                await call.stream(PCM, realtime=False)
                with trio.fail_after(10):
                    await call.wait_for_audio(len(PCM))
                assert call.received_pcm == PCM


async def test_a_bad_certificate_stops_the_supervisor_before_any_worker(tmp_path):
    (tmp_path / "gateway.toml").write_text(
        f'tls_certfile = "{tmp_path}/missing.pem"\ntls_keyfile = "{tmp_path}/missing.pem"\n'
    )
    command = [*WORKERS, "--config", str(tmp_path / "gateway.toml")]
    async with gateway_process(command, listening=False) as gateway:
        assert await gateway.wait_exit() == 2
    assert f"tls_certfile (config file '{tmp_path}/gateway.toml', key tls_certfile)" in gateway.text
    assert "worker 0 started" not in gateway.text


async def test_a_taken_port_stops_the_supervisor_with_exit_code_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [*SERVE, "--host", "127.0.0.1", "--port", str(port)]
        async with gateway_process([*command, "--workers", "2"], listening=False) as gateway:
            assert await gateway.wait_exit() == 2
    assert f"cannot listen on 127.0.0.1:{port}, the media port (flag --port)" in gateway.text
    assert "Address already in use" in gateway.text
    assert "worker 0 started" not in gateway.text


async def test_sigterm_while_workers_start_is_a_clean_stop():
    async with gateway_process(WORKERS, listening=False) as gateway:
        await gateway.wait_log("worker 1 started")  # its Python is still starting
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
    assert "ended with exit code" not in gateway.text


async def test_the_supervisor_serves_readiness_and_every_workers_metrics():
    env = {"ACS_GATEWAY_HEALTH_HOST": "127.0.0.1"}
    async with gateway_process([*WORKERS, "--health-port", "0"], env=env) as gateway:
        found = await gateway.wait_log(r"health and metrics on http://127\.0\.0\.1:\d+/")
        health = int(found[0].rsplit(":", 1)[1].rstrip("/"))
        await gateway.wait_log("all 2 workers ready")
        assert await http(health, "/readyz") == (200, "ready\n")
        async with calls_on_every_worker(gateway) as calls:
            opened = len(calls)
        frames = len(PCM) // 640 * opened

        def summed() -> tuple[float, float]:
            return (
                totals.get(("acs_gateway_calls_accepted_total", ()), 0),
                totals.get(("acs_gateway_audio_frames_in_total", ()), 0),
            )

        with trio.fail_after(10):
            while True:  # each worker adds its call's counts when the call has ended
                totals = samples((await http(health, "/metrics"))[1])
                if summed() == (opened, frames):
                    break
                await trio.sleep(0.05)
        async with simulated_call(gateway.url):  # keeps the drain going
            gateway.process.send_signal(signal.SIGTERM)
            await gateway.wait_log("draining 2 worker")
            status, body = await http(health, "/readyz")
            assert status == 503 and "draining" in body
        assert await gateway.wait_exit() == 0


async def test_sighup_reloads_every_worker_and_drops_nothing(tmp_path):
    settings = tmp_path / "gateway.toml"
    settings.write_text("max_calls = 100\n")
    async with gateway_process([*WORKERS, "--config", str(settings)]) as gateway:
        pids = await live_workers(gateway)
        await gateway.wait_log("all 2 workers ready")
        async with simulated_call(gateway.url) as call:
            settings.write_text("max_calls = 50\n")
            gateway.process.send_signal(signal.SIGHUP)
            await gateway.wait_log("SIGHUP: reloading the configuration", count=2)
            await gateway.wait_log("configuration reloaded: max_calls=50", count=2)
            await call.stream(PCM, realtime=False)
            with trio.fail_after(10):
                await call.wait_for_audio(len(PCM))
            assert call.received_pcm == PCM and not call.closed.is_set()
        assert gateway.workers() == pids  # reloaded in place, not restarted


async def try_call(url: str, opened: list[AsyncExitStack]) -> SimulatedCall | int:
    """Open a call that echoes once (its exit stack appended to `opened`), or the HTTP status
    it was refused with."""
    stack = AsyncExitStack()
    try:
        call = await stack.enter_async_context(simulated_call(url))
    except trio_websocket.HandshakeError as refused:
        return refused.status_code  # type: ignore[attr-defined,no-any-return]
    opened.append(stack)
    await call.stream(PCM, realtime=False)
    with trio.fail_after(10):
        await call.wait_for_audio(len(PCM))
    return call


async def close_all(opened: list[AsyncExitStack]) -> None:
    while opened:  # the last opened first: each call's nursery nests in the one before
        await opened.pop().aclose()


async def readyz_becomes(health: int, status: int) -> str:
    with trio.fail_after(10):
        while True:  # the supervisor hears each worker's report within a second
            got, body = await http(health, "/readyz")
            if got == status:
                return body
            await trio.sleep(0.05)


async def test_max_calls_is_the_whole_gateways_and_readyz_follows_admission_and_reloads(tmp_path):
    """Two workers share max_calls; /readyz is 200 exactly when a new call would be admitted,
    whichever worker the kernel hands it to, after calls start and end and after a reload."""
    settings = tmp_path / "gateway.toml"
    settings.write_text("max_calls = 2\n")
    env = {"ACS_GATEWAY_HEALTH_HOST": "127.0.0.1"}
    command = [*WORKERS, "--config", str(settings), "--health-port", "0"]
    async with gateway_process(command, env=env) as gateway:
        found = await gateway.wait_log(r"health and metrics on http://127\.0\.0\.1:\d+/")
        health = int(found[0].rsplit(":", 1)[1].rstrip("/"))
        await gateway.wait_log("all 2 workers ready")
        assert (await http(health, "/readyz"))[0] == 200
        opened: list[AsyncExitStack] = []
        try:
            outcomes = [await try_call(gateway.url, opened) for _ in range(8)]  # kernel-spread
            refusals = sorted(c for c in outcomes if isinstance(c, int))
            assert len(opened) == 2 and refusals == [503] * 6
            assert "at the limit of 2 calls" in await readyz_becomes(health, 503)
            await opened.pop().aclose()
            await readyz_becomes(health, 200)  # one place free in the gateway

            settings.write_text("max_calls = 1\n")  # the one live call fills the gateway now
            gateway.process.send_signal(signal.SIGHUP)
            await gateway.wait_log("configuration reloaded: max_calls=1", count=2)
            assert "at the limit of 1 calls" in await readyz_becomes(health, 503)
            assert [await try_call(gateway.url, opened) for _ in range(4)] == [503] * 4

            settings.write_text("max_calls = 3\n")
            gateway.process.send_signal(signal.SIGHUP)
            await gateway.wait_log("configuration reloaded: max_calls=3", count=2)
            await readyz_becomes(health, 200)
            assert not isinstance(await try_call(gateway.url, opened), int)  # as /readyz said
        finally:
            await close_all(opened)

        # Each process's own figures, labelled by worker, through the supervisor.
        text = (await http(health, "/metrics"))[1]
        rss = {
            dict(labels)["worker"]
            for (name, labels), value in samples(text).items()
            if name == "process_resident_memory_bytes" and value > 0
        }
        assert rss == {"0", "1", "supervisor"}
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
