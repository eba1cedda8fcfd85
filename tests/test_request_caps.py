"""Request heads are capped exactly, however their bytes arrive: in one read or in many, a head
one byte over the documented size is refused (431) and one at the size is served, on the media
port's upgrade and on the health port."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.ops import health
from gateway.ops.health import serve_health
from gateway.testing import open_gateway
from gateway.wire.handshake import MAX_REQUEST_BYTES, ServerHandshake
from gateway.wire.request_head import HeadTooLarge, RequestHeadLimit

UPGRADE_START = (
    b"GET /media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def padded(start: bytes, size: int) -> bytes:
    """A request head of exactly `size` bytes: `start`, one filler header, the blank line."""
    filler = size - len(start) - len(b"X-Pad: \r\n\r\n")
    head = start + b"X-Pad: " + b"a" * filler + b"\r\n\r\n"
    assert len(head) == size
    return head


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_the_gate_refuses_a_head_one_byte_over_its_limit_in_any_pieces(chunk):
    start = b"GET / HTTP/1.1\r\n"
    for size, fits in ((200, True), (201, False)):
        gate = RequestHeadLimit(200)
        try:
            for piece in pieces(padded(start, size) * 3, chunk):
                gate.feed(piece)
        except HeadTooLarge:
            assert not fits
        else:
            assert fits and gate.heads == 3
    gate = RequestHeadLimit(200, count=1)  # one head, then anything: a WebSocket's frames
    for piece in pieces(padded(start, 200) + b"\x81\x85" * 5000, chunk):
        gate.feed(piece)
    assert gate.done


@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 1, 20_000, 40_000, 60_000])
@pytest.mark.parametrize("chunk", [1 << 20, 4096, 1000])
def test_an_upgrade_request_over_the_cap_is_refused_in_one_read_or_many(size, chunk):
    handshake = ServerHandshake()
    refused = None
    for piece in pieces(padded(UPGRADE_START, size), chunk):
        handshake.receive_data(piece)
        try:
            assert handshake.next_request() is None
        except Exception as exc:
            refused = exc
            break
    assert refused is not None and getattr(refused, "http_status", None) == 431


@pytest.mark.parametrize("chunk", [1 << 20, 1000])
def test_an_upgrade_request_at_the_cap_is_read(chunk):
    handshake = ServerHandshake()
    for piece in pieces(padded(UPGRADE_START, MAX_REQUEST_BYTES), chunk):
        handshake.receive_data(piece)
    request = handshake.next_request()
    assert request is not None and len(request.headers["x-pad"]) > 16000


async def response_to(port: int, data: bytes, chunk: int) -> bytes:
    """Send `data` in `chunk`-byte writes; what the server answers before it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            for piece in pieces(data, chunk):
                await stream.send_all(piece)
                if chunk < len(data):
                    await trio.testing.wait_all_tasks_blocked()  # the server read it
        except trio.BrokenResourceError:
            pass  # refused before all of it was sent
        answer = b""
        with trio.fail_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            except trio.BrokenResourceError:
                pass
    return answer


@pytest.mark.parametrize("chunk", [1 << 20, 2048])
async def test_the_media_port_refuses_a_large_upgrade_before_anything_else(chunk):
    async with open_gateway() as server:
        port = int(server.urls[0].rsplit(":", 1)[1].split("/")[0])
        answer = await response_to(port, padded(UPGRADE_START, 40_000), chunk)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert server.context.stats.calls_accepted == 0


@pytest.mark.parametrize("chunk", [1 << 20, 1000])
async def test_the_health_port_answers_431_beyond_its_cap_and_200_at_it(nursery, chunk):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    start = b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    for size in (health.MAX_REQUEST_BYTES + 1, 9_000, 16_000):
        assert (await response_to(port, padded(start, size), chunk)).startswith(b"HTTP/1.1 431 ")
    answer = await response_to(port, padded(start, health.MAX_REQUEST_BYTES), chunk)
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_the_health_port_refuses_request_bodies(nursery):
    port = await nursery.start(serve_health, "127.0.0.1", 0, lambda: (True, "ready"))
    request = b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert (await response_to(port, request, 1 << 20)).startswith(b"HTTP/1.1 413 ")
