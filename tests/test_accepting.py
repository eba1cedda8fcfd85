"""Accepting under abuse, and the drain's delay: the media port's door (real sockets on
127.0.0.1; the drain on Trio's autojump clock)."""

from __future__ import annotations

import resource
import signal
import sys
from collections.abc import Callable

import pytest
import trio
import trio_websocket

from gateway.server.serve import Server
from gateway.testing import open_gateway, simulated_call
from tests.daemons import SERVE, gateway_process

FRAME = bytes(640)  # 20 ms of silence at 16 kHz


def address(server: Server) -> tuple[str, int]:
    host, port = server.urls[0].removeprefix("ws://").rsplit(":", 1)
    return host, int(port)


async def idle_connection(server: Server, source: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection from `source` that sends nothing (it sits in the upgrade)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(address(server))
    return trio.SocketStream(sock)


async def until(predicate: Callable[[], bool]) -> None:
    # the server counts what it accepted; there is no event to wait on
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def refused_at_once(server: Server, sock: trio.socket.SocketType | None = None) -> bool:
    """Connect (with `sock`, or from 127.0.0.1): the server closes or resets the connection
    without waiting for a byte from us (the reset may come while connect() returns)."""
    if sock is None:
        sock = trio.socket.socket()
    try:
        await sock.connect(address(server))
    except ConnectionResetError:
        sock.close()
        return True
    async with trio.SocketStream(sock) as stream:
        with trio.fail_after(2):
            try:
                return await stream.receive_some(100) == b""
            except trio.BrokenResourceError:  # the reset: closed with SO_LINGER 0
                return True


async def from_source(source: str) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    return sock


async def echo_once(server: Server) -> None:
    async with simulated_call(server.urls[0]) as call:
        await call.stream(FRAME, realtime=False)
        with trio.fail_after(5):
            await call.wait_for_audio(len(FRAME))
        assert call.received_pcm == FRAME


async def test_connections_beyond_max_pending_handshakes_are_closed_unread_and_counted():
    async with open_gateway(
        max_pending_handshakes=3, max_pending_handshakes_per_source=None
    ) as server:
        pending = [await idle_connection(server) for _ in range(3)]
        await until(lambda: server.context.admission.pending == 3)
        assert await refused_at_once(server)
        assert server.stats.connections_refused == {"max_pending_handshakes": 1}
        assert server.stats.handshakes_failed == 0  # never read, never a handshake
        for stream in pending:
            await stream.aclose()
        await until(lambda: server.context.admission.pending == 0)
        await echo_once(server)  # room again
        server.metrics.flush()
        refused = server.metrics.connections_refused.labels("max_pending_handshakes")
        assert refused._value.get() == 1


async def test_one_source_cannot_take_every_pending_handshake():
    async with open_gateway(max_pending_handshakes_per_source=2) as server:
        hostile = [await idle_connection(server, "127.0.0.2") for _ in range(2)]
        await until(lambda: server.context.admission.pending_by_source["127.0.0.2"] == 2)
        assert await refused_at_once(server, await from_source("127.0.0.2"))
        await echo_once(server)  # another source is not held up
        assert server.stats.connections_refused == {"max_pending_handshakes_per_source": 1}
        for stream in hostile:
            await stream.aclose()
        await until(lambda: not server.context.admission.pending_by_source)


# Start the gateway with few descriptors: a soft limit it must raise, a hard one it runs into.
LOW_LIMITS = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (40, 64))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


async def answers_http(host: str, port: int) -> bool:
    """A plain GET gets the media port's 426 (False: refused or reset)."""
    try:
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
            return (await stream.receive_some(100)).startswith(b"HTTP/1.1 426 ")
    except (OSError, trio.BrokenResourceError):
        return False


async def test_out_of_descriptors_new_connections_are_refused_counted_and_serving_goes_on():
    env = {
        "ACS_GATEWAY_HANDSHAKE_TIMEOUT": "60",  # the idle ones hold their descriptors
        "ACS_GATEWAY_MAX_PENDING_HANDSHAKES_PER_SOURCE": "1000",
    }
    command = [sys.executable, "-c", LOW_LIMITS, *SERVE[1:], "--host", "127.0.0.1", "--port", "0"]
    async with gateway_process(command, env=env) as gateway:
        await gateway.wait_log("soft limit raised from 40 to the hard limit 64")
        host, port = gateway.url.removeprefix("ws://").rsplit(":", 1)
        streams: list[trio.SocketStream] = []
        refused = 0
        for _ in range(100):  # more than 64 descriptors' worth, at once
            try:
                streams.append(await trio.open_tcp_stream(host, int(port)))
            except OSError:  # reset while connect() returned
                refused += 1
        held: list[trio.SocketStream] = []

        async def closed_or_held(stream: trio.SocketStream) -> None:
            nonlocal refused
            with trio.move_on_after(1.0):  # the gateway never answers an idle connection
                try:
                    await stream.receive_some(1)  # b"": closed
                except trio.BrokenResourceError:  # the reset
                    pass
                refused += 1
                return
            held.append(stream)

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(closed_or_held, stream)
        assert refused >= 100 - 64 and held  # closed at once, not left in the queue
        await gateway.wait_log("accept failed .*Too many open files")
        for stream in streams:
            await stream.aclose()
        # Still serving, once it has closed the connections we dropped (refused until then).
        with trio.fail_after(10):
            while not await answers_http(host, int(port)):  # noqa: ASYNC110 (only the kernel knows)
                await trio.sleep(0.05)
        async with simulated_call(gateway.url) as call:
            await call.stream(FRAME, realtime=False)
            with trio.fail_after(10):
                await call.wait_for_audio(len(FRAME))
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0


async def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit_at_start(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard, 512), hard))
    try:
        async with open_gateway():
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"to the hard limit {hard}" in caplog.text


async def test_drain_delay_takes_the_sign_down_before_closing_the_door(autojump_clock):
    async with open_gateway(drain_delay=60.0, shutdown_grace=30.0) as server:
        async with simulated_call(server.urls[0]) as live:
            started = trio.current_time()
            server.drain()
            assert server.readiness() == (False, "draining")  # at once
            await trio.sleep(1.0)
            await echo_once(server)  # still accepting, and served
            await trio.sleep_until(started + 60.5)
            with pytest.raises(OSError):  # the listener closed: a TCP refusal
                await trio.open_tcp_stream(*address(server))
            assert not live.closed.is_set()  # the grace counts from the close
            await trio.sleep_until(started + 89.0)
            assert not live.closed.is_set()
            with trio.fail_after(5):
                await server.stopped.wait()
            assert trio.current_time() == pytest.approx(started + 90.0, abs=0.5)
        assert live.close_code == 1001


async def test_refused_connections_do_not_count_as_calls_or_handshakes():
    async with open_gateway(max_calls=1) as server:
        async with simulated_call(server.urls[0]):
            with pytest.raises(trio_websocket.HandshakeError):
                async with simulated_call(server.urls[0]):
                    pass
        assert server.context.admission.pending == 0
        assert not server.stats.connections_refused
