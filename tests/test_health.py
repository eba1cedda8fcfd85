"""The health endpoint over real sockets on 127.0.0.1, port 0: liveness, readiness, metrics,
and clients that misbehave."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import health
from gateway.ops.health import HealthEndpoint, serve_health
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


async def test_a_silent_client_is_dropped_after_the_timeout(autojump_clock):
    endpoint = HealthEndpoint(lambda: (True, "ready"), None)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.serve, server)
        start = trio.current_time()
        await client.send_all(b"GET /livez HTTP/1.1\r\n")  # and nothing more
        assert await client.receive_some(100) == b""  # closed by the server
        assert trio.current_time() - start == health.REQUEST_TIMEOUT


async def test_connections_beyond_the_cap_are_closed_and_the_rest_served(nursery):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(health.MAX_CONNECTIONS)]
    try:
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        async with extra:
            with trio.fail_after(5):
                assert await extra.receive_some(100) == b""  # closed at once
        await idle[0].send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            assert b"200 OK" in await idle[0].receive_some(1000)
    finally:
        for stream in idle:
            await stream.aclose()
    with trio.fail_after(5):  # the closed ones free their slots
        while True:
            try:
                assert await http(port, "/livez") == (200, "ok\n")
                break
            except trio.BrokenResourceError:
                await trio.sleep(0.01)


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
