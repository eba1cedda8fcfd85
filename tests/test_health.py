"""The health endpoint over real sockets on 127.0.0.1, port 0: liveness, readiness, metrics,
and clients that misbehave."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from functools import partial

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import health
from gateway.ops.health import HealthEndpoint, serve_health
from gateway.ops.health_limits import HealthLimits
from gateway.ops.metrics import Metrics
from gateway.server.serve import Server
from gateway.testing import open_gateway, simulated_call


async def http(port: int, path: str, method: str = "GET", headers: str = "") -> tuple[int, str]:
    """One request on a new connection (Connection: close): (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def no_live_calls(server: Server) -> None:
    """Wait (briefly) until the server has seen every call end."""
    with trio.fail_after(5):
        while server.live:  # noqa: ASYNC110 - the server has no event for it
            await trio.sleep(0.01)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}; raises if it does not parse."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_live_ready_and_metrics(nursery):
    state = {"ready": (True, "ready")}
    metrics = Metrics()
    metrics.calls_accepted.inc(3)
    serve = partial(serve_health, metrics=metrics.exposition)
    port = await nursery.start(serve, "127.0.0.1", 0, lambda: state["ready"])
    assert await http(port, "/livez") == (200, "ok\n")
    assert await http(port, "/readyz") == (200, "ready\n")
    state["ready"] = (False, "draining")
    assert await http(port, "/readyz") == (503, "not ready: draining\n")
    assert await http(port, "/livez") == (200, "ok\n")  # alive while not ready
    status, text = await http(port, "/metrics")
    assert status == 200
    assert samples(text)[("acs_gateway_calls_accepted_total", ())] == 3
    status, text = await http(port, "/metrics", headers="Accept: application/openmetrics-text\r\n")
    assert status == 200 and text.endswith("# EOF\n")


async def test_a_registry_is_served_as_is(nursery):
    metrics = Metrics()
    metrics.stop_audio_sent.inc(2)
    serve = partial(serve_health, registry=metrics.registry)
    port = await nursery.start(serve, "127.0.0.1", 0, lambda: (True, "ready"))
    status, text = await http(port, "/metrics")
    assert samples(text)[("acs_gateway_stop_audio_sent_total", ())] == 2


async def test_wrong_paths_methods_and_garbage_get_http_errors(nursery):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    assert (await http(port, "/nope"))[0] == 404
    assert (await http(port, "/metrics"))[0] == 404  # no metrics given to this endpoint
    assert (await http(port, "/readyz", method="POST"))[0] == 405
    assert await http(port, "/livez", method="HEAD") == (200, "")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        with trio.fail_after(5):
            assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 400 Bad Request")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:  # a request head larger than the cap: refused, not buffered
        await stream.send_all(b"GET /livez HTTP/1.1\r\nX: " + b"a" * health.MAX_REQUEST_BYTES)
        with trio.fail_after(5):
            assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 431")
    assert await http(port, "/livez") == (200, "ok\n")  # and it goes on serving


async def test_keep_alive_serves_several_requests_on_one_connection(nursery):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        data = b""
        with trio.fail_after(5):
            while data.count(b"ok\n") < 2:
                data += await stream.receive_some(1000)
        assert data.count(b"HTTP/1.1 200 OK") == 2


async def answers(stream: trio.abc.Stream, count: int) -> bytes:
    """Read until `count` answers came (or the server closed)."""
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


class FakeListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands the endpoint the server ends of memory stream pairs, one per `connect()`."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](0)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self.send.send(server)
        await trio.testing.wait_all_tasks_blocked()  # the endpoint has taken it
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self.receive.receive()

    async def aclose(self) -> None:
        await self.receive.aclose()


async def closed(stream: trio.abc.Stream) -> bool:
    """Whether the server closed `stream` (not just waiting: the test's clock jumps)."""
    with trio.move_on_after(0.001):
        return await stream.receive_some(100) == b""
    return False


PROBE = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_silent_client_is_dropped_after_the_idle_timeout(autojump_clock):
    endpoint = HealthEndpoint(lambda: (True, "ready"), None)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.serve, server)
        start = trio.current_time()
        assert await client.receive_some(100) == b""  # nothing sent: closed by the server
        assert trio.current_time() - start == health.LIMITS.idle_timeout
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(endpoint.serve, server)
        await client.send_all(PROBE)  # keep-alive: the next request has as long to begin
        assert b"200 OK" in await answers(client, 1)
        start = trio.current_time()
        assert await client.receive_some(100) == b""
        assert trio.current_time() - start == health.LIMITS.idle_timeout


async def test_a_slow_request_is_dropped_after_the_header_timeout(autojump_clock):
    endpoint = HealthEndpoint(lambda: (True, "ready"), None)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.serve, server)
        nursery.start_soon(slowloris, client)
        start = trio.current_time()
        assert await client.receive_some(100) == b""
        assert trio.current_time() - start == health.LIMITS.header_timeout


async def slowloris(stream: trio.abc.Stream) -> None:
    """A request, a byte every 0.5 s: each well within the idle timeout, the whole not."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for byte in PROBE:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.5)


async def test_a_connection_serves_a_bounded_number_of_requests(autojump_clock):
    limits = HealthLimits(max_requests_per_connection=3)
    endpoint = HealthEndpoint(lambda: (True, "ready"), None, limits)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.serve, server)
        await client.send_all(PROBE * 5)
        data = await answers(client, 5)
        assert data.count(b"HTTP/1.1 200 OK") == 3
        assert data.endswith(b"ok\n") and b"connection: close" in data.rsplit(b"HTTP/1.1", 1)[1]
        assert await client.receive_some(100) == b""


async def test_a_full_endpoint_evicts_its_oldest_idle_connection_and_answers_the_new(
    autojump_clock,
):
    endpoint = HealthEndpoint(lambda: (True, "ready"), None, HealthLimits(max_connections=8))
    listener = FakeListener()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.serve_listener, listener)
        slow = [await listener.connect() for _ in range(4)]  # each began a request
        for stream in slow:  # one after another: which began first must not be a tie
            await stream.send_all(b"GET /livez HTTP/1.1\r\n")
            await trio.sleep(0.01)
        await trio.sleep(0.5)
        idle = [await listener.connect() for _ in range(4)]  # idle, the youngest
        for stream in idle + slow:
            assert not await closed(stream)
        for n in range(4):  # each newcomer takes the place of the oldest idle one
            probe = await listener.connect()
            assert await closed(idle[n])
            for stream in idle[n + 1 :] + slow:
                assert not await closed(stream)
            await probe.send_all(PROBE)
            assert b"200 OK" in await answers(probe, 1)
            idle.append(probe)  # it waits for its next request: idle again, the youngest
        for stream in idle[4:]:
            await stream.send_all(b"GET /livez HTTP/1.1\r\n")  # none idle now
        await trio.testing.wait_all_tasks_blocked()  # the endpoint has read those bytes
        probe = await listener.connect()  # so the one reading the longest goes
        assert await closed(slow[0])
        await probe.send_all(PROBE)
        assert b"200 OK" in await answers(probe, 1)
        assert endpoint.connections.evicted == 5
        assert len(endpoint.connections.slots) == 8
        nursery.cancel_scope.cancel()


async def test_probes_are_answered_with_many_idle_connections_open(nursery):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    share = HealthLimits().max_connections_per_source
    sources = [f"127.0.0.{2 + n // share}" for n in range(health.MAX_CONNECTIONS)]
    idle = [await trio.open_tcp_stream("127.0.0.1", port, local_address=a) for a in sources]
    try:
        for path, answer in (("/livez", (200, "ok\n")), ("/readyz", (200, "ready\n"))):
            for _ in range(3):
                assert await http(port, path) == answer
        idle.append(await trio.open_tcp_stream("127.0.0.1", port))
        await idle[-1].send_all(PROBE)  # keep-alive on an old connection is served too
        with trio.fail_after(5):
            assert b"200 OK" in await idle[-1].receive_some(1000)
    finally:
        for stream in idle:
            await stream.aclose()


async def test_readiness_of_a_gateway_at_its_limit_and_draining(nursery):
    async with open_gateway(max_calls=1) as server:
        port = await nursery.start(serve_health, "127.0.0.1", 0, server.readiness)
        assert await http(port, "/readyz") == (200, "ready\n")
        async with simulated_call(server.urls[0]) as call:
            await call.stream(bytes(640), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
            assert await http(port, "/readyz") == (503, "not ready: at the limit of 1 calls\n")
        await no_live_calls(server)
        assert await http(port, "/readyz") == (200, "ready\n")
        server.drain(5)
        assert await http(port, "/readyz") == (503, "not ready: draining\n")
        assert await http(port, "/livez") == (200, "ok\n")


def _connect_and_send(port: int, source: str, data: bytes) -> trio.socket.SocketType:
    """Connect from `source` and send `data` before the endpoint can run (a blocking connect
    and send in this thread): the connection is accepted with its request already waiting."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    if data:
        sock.sendall(data)
    sock.setblocking(False)
    return trio.socket.from_stdlib_socket(sock)


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - the endpoint has no event for it
            await trio.sleep(0.001)


async def _closed_by_peer(sock: trio.socket.SocketType) -> bool:
    with trio.fail_after(5):
        try:
            return await sock.recv(100) == b""
        except ConnectionResetError:
            return True


async def test_an_address_at_its_share_is_refused_at_accept_unless_its_request_waits(nursery):
    limits = HealthLimits(max_connections_per_source=4, lobby_wait=1)
    endpoint = HealthEndpoint(lambda: (True, "ready"), None, limits)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    nursery.start_soon(endpoint.serve_listener, listener)
    held = [await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")]
    for _ in range(3):
        held.append(await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2"))
    await _until(lambda: endpoint.connections.by_source["127.0.0.2"] == 4)
    silent = _connect_and_send(port, "127.0.0.2", b"")
    await _until(lambda: bool(endpoint.lobby.waiting))  # its address is at its share
    assert await _closed_by_peer(silent)  # it did not: refused, with no task of its own
    assert endpoint.connections.evicted == 0 and endpoint.lobby.refused == 1
    late = _connect_and_send(port, "127.0.0.2", b"")
    await _until(lambda: bool(endpoint.lobby.waiting))  # accepted before its request arrived
    await late.send(PROBE)
    with trio.fail_after(5):
        assert (await late.recv(1000)).startswith(b"HTTP/1.1 200 OK")
    assert endpoint.connections.evicted == 1  # it took the place of its address's idlest
    probe = _connect_and_send(port, "127.0.0.2", PROBE)  # its request is already waiting
    with trio.fail_after(5):
        assert (await probe.recv(1000)).startswith(b"HTTP/1.1 200 OK")
    assert endpoint.connections.evicted == 2
    assert endpoint.connections.by_source["127.0.0.2"] <= 4
    other = await trio.open_tcp_stream("127.0.0.1", port)  # another address is not affected
    await other.send_all(PROBE)
    assert b"200 OK" in await answers(other, 1)
    for stream in (silent, late, probe):
        stream.close()
    for held_stream in (*held, other):
        await held_stream.aclose()


async def test_a_newcomer_to_a_full_endpoint_takes_a_place_only_once_it_speaks(nursery):
    limits = HealthLimits(max_connections=4, lobby_wait=1)
    endpoint = HealthEndpoint(lambda: (True, "ready"), None, limits)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    nursery.start_soon(endpoint.serve_listener, listener)
    held = [
        await trio.open_tcp_stream("127.0.0.1", port, local_address=f"127.0.0.{n}")
        for n in range(2, 6)
    ]
    await _until(lambda: len(endpoint.connections.slots) == 4)
    silent = _connect_and_send(port, "127.0.0.9", b"")  # from a new address, but no room
    await _until(lambda: bool(endpoint.lobby.waiting))
    assert await _closed_by_peer(silent)  # it never spoke: nobody lost a place to it
    assert endpoint.connections.evicted == 0 and len(endpoint.connections.slots) == 4
    late = _connect_and_send(port, "127.0.0.9", b"")
    await _until(lambda: bool(endpoint.lobby.waiting))
    await late.send(PROBE)
    with trio.fail_after(5):
        assert (await late.recv(1000)).startswith(b"HTTP/1.1 200 OK")
    assert endpoint.connections.evicted == 1  # the oldest idle connection made room
    with trio.fail_after(5):
        assert await held[0].receive_some(100) == b""
    for stream in (silent, late):
        stream.close()
    for held_stream in held:
        await held_stream.aclose()
