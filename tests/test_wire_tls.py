"""`gateway.wire.tls.TLSStream`, the client side of the model's TLS connection, against
`trio.SSLStream` serving on 127.0.0.1: the handshake and its refusal, data both ways in order
(records larger and smaller than a read), the ends of a stream, and a write cut short."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.wire.client import ClientWebSocket
from gateway.wire.connection import Connection
from gateway.wire.events import TextMessage
from gateway.wire.tls import TLSStream
from gateway.wire.transport import SocketTransport
from tests.daemons import throwaway_tls

Handler = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


@asynccontextmanager
async def tls_server(
    handler: Handler, directory: Path
) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    """`handler` serves each connection over TLS (trio's own server side); yields the port and
    a client context that trusts the server's certificate."""
    certfile, keyfile, client_context = throwaway_tls(directory)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, keyfile)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1"), handler, 0, server_context
        )
        yield listeners[0].transport_listener.socket.getsockname()[1], client_context
        nursery.cancel_scope.cancel()


async def connect(port: int, context: ssl.SSLContext) -> TLSStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = TLSStream(SocketTransport.from_socket_stream(tcp), context, "127.0.0.1")
    await stream.do_handshake()
    return stream


async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def receive_exactly(stream: TLSStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await stream.receive_some()
        assert more, f"the stream ended after {len(data)} of {n} bytes"
        data += more
    return data


async def test_data_goes_both_ways_in_order(tmp_path):
    """Messages from a byte to several TLS records (16 KB each) come back whole and in order,
    one after another and several at once."""
    async with tls_server(echo, tmp_path) as (port, context):
        stream = await connect(port, context)
        sizes = [1, 100, 2600, 16384, 16385, 100_000]
        messages = [bytes([i]) * size for i, size in enumerate(sizes)]
        with trio.fail_after(10):
            for message in messages:
                await stream.send_all(message)
                assert await receive_exactly(stream, len(message)) == message
            for message in messages:  # all sent before any is read back
                await stream.send_all(message)
            assert await receive_exactly(stream, sum(sizes)) == b"".join(messages)
        await stream.aclose()


async def test_a_read_returns_at_most_max_bytes(tmp_path):
    async with tls_server(echo, tmp_path) as (port, context):
        stream = await connect(port, context)
        await stream.send_all(b"x" * 5000)
        got = b""
        with trio.fail_after(10):
            while len(got) < 5000:
                piece = await stream.receive_some(700)
                assert 0 < len(piece) <= 700
                got += piece
        assert got == b"x" * 5000
        await stream.aclose()


async def test_a_server_the_context_does_not_trust_is_refused(tmp_path):
    async with tls_server(echo, tmp_path) as (port, _):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = TLSStream(
            SocketTransport.from_socket_stream(tcp), ssl.create_default_context(), "127.0.0.1"
        )
        with pytest.raises(trio.BrokenResourceError) as refused:
            await stream.do_handshake()
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        await stream.aclose()


@pytest.mark.parametrize("how", ["close_notify", "socket closed"])
async def test_the_peer_ending_the_stream_is_its_end(tmp_path, how):
    async def say_and_end(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"bye")
        if how == "close_notify":
            await stream.aclose()
        else:
            await stream.transport_stream.aclose()

    async with tls_server(say_and_end, tmp_path) as (port, context):
        stream = await connect(port, context)
        with trio.fail_after(10):
            assert await receive_exactly(stream, 3) == b"bye"
            assert await stream.receive_some() == b""
        await stream.aclose()


async def test_after_aclose_the_stream_is_closed(tmp_path):
    async with tls_server(echo, tmp_path) as (port, context):
        stream = await connect(port, context)
        await stream.aclose()
        await stream.aclose()  # twice is fine
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()


async def test_concurrent_reads_are_refused(tmp_path):
    async with tls_server(echo, tmp_path) as (port, context):
        stream = await connect(port, context)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await stream.receive_some()
            nursery.cancel_scope.cancel()
        await stream.aclose()


async def test_a_write_cut_short_breaks_the_stream(tmp_path):
    """A peer that stops reading fills the socket; a write cancelled while it waits has sent
    part of its records, so the stream refuses every later write and read."""
    stalled = trio.Event()

    async def never_read(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        await stalled.wait()

    async with tls_server(never_read, tmp_path) as (port, context):
        stream = await connect(port, context)

        async def fill() -> None:
            while True:
                await stream.send_all(b"x" * 65536)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fill)
            await trio.testing.wait_all_tasks_blocked()  # the socket is full: the write waits
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        stalled.set()
        await stream.aclose()


async def test_writers_waiting_for_a_full_socket_keep_their_order(tmp_path):
    """While one write waits for a peer that has stopped reading, a second write waits its
    turn; once the peer reads again, both arrive whole and in order (a record sent out of
    order would fail the peer's TLS)."""
    reading, done = trio.Event(), trio.Event()
    received: list[bytes] = []

    async def read_later(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        await reading.wait()
        data = b""
        while len(data) < 2_000_001:
            data += await stream.receive_some()
        received.append(data)
        done.set()

    async with tls_server(read_later, tmp_path) as (port, context):
        stream = await connect(port, context)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, b"a" * 2_000_000)  # more than the socket holds
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(stream.send_all, b"b")
                await trio.testing.wait_all_tasks_blocked()
                reading.set()
            await done.wait()
        assert received == [b"a" * 2_000_000 + b"b"]
        await stream.aclose()


async def test_the_server_side_runs_the_handshake_on_its_first_read(tmp_path):
    """As the gateway serves `wss://`: the server's first read runs the handshake; then data
    goes both ways, and a client that is not TLS at all breaks the stream, not the server."""
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, keyfile)
    results: list[bytes | Exception] = []
    both_served = trio.Event()

    async def serve(tcp: trio.SocketStream) -> None:
        stream = TLSStream(
            SocketTransport.from_socket_stream(tcp), server_context, server_side=True
        )
        try:
            data = await stream.receive_some()
            await stream.send_all(data.upper())
            results.append(data)
        except trio.BrokenResourceError as exc:
            results.append(exc)
        finally:
            await stream.aclose()
            if len(results) == 2:
                both_served.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), serve, 0
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            client = trio.SSLStream(
                await trio.open_tcp_stream("127.0.0.1", port),
                client_context,
                server_hostname="127.0.0.1",
            )
            await client.send_all(b"hello")
            assert await client.receive_some() == b"HELLO"
            await client.aclose()
            plain = await trio.open_tcp_stream("127.0.0.1", port)
            await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await plain.receive_some() == b""  # closed: no answer in the clear
            await plain.aclose()
            await both_served.wait()
        nursery.cancel_scope.cancel()
    assert results[0] == b"hello"
    assert isinstance(results[1], trio.BrokenResourceError)


async def test_send_nowait_writes_at_once_or_owes_the_rest_to_the_next_write(tmp_path):
    """The server's direct path: what it encrypted goes now, or (the kernel full) waits as
    the stream's backlog; meanwhile a further write is handed back untouched, and the next
    `send_all` sends the backlog first. The peer reads everything, whole and in order."""
    reading, done = trio.Event(), trio.Event()
    received: list[bytes] = []

    async def read_later(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        data = await stream.receive_some()
        received.append(data)
        await reading.wait()
        async for more in stream:
            data += more
            if data.endswith(b"end"):
                break
        received.append(data)
        done.set()

    async with tls_server(read_later, tmp_path) as (port, context):
        stream = await connect(port, context)
        with trio.fail_after(10):
            assert stream.send_nowait(b"first") == b""
            assert not stream.backlogged()
            while received != [b"first"]:
                await trio.testing.wait_all_tasks_blocked()
            accepted = [b"first"]
            chunk = 0
            while not stream.backlogged():  # until the kernel's buffers are full
                piece = bytes([65 + chunk % 26]) * 65536
                assert stream.send_nowait(piece) == b""
                accepted.append(piece)
                chunk += 1
            assert stream.send_nowait(b"later") == b"later"  # not taken: it would overtake
            reading.set()
            await stream.send_all(b"")  # what is owed
            assert not stream.backlogged()
            await stream.send_all(b"later" + b"end")
            await done.wait()
        assert received[1] == b"".join(accepted) + b"later" + b"end"
        await stream.aclose()


async def test_a_client_websocket_owes_a_tls_backlog_to_its_next_write(tmp_path):
    """The bridge's direct write over TLS: messages go at once until the kernel is full; then
    the encrypted rest is owed, no direct write may overtake it, and the next write (a flush)
    sends it first. The peer reads every message whole and in order."""
    reading, done = trio.Event(), trio.Event()
    received: list[bytes] = []

    async def read_frames(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        await reading.wait()
        connection = Connection(1 << 24)  # the server's side: masked frames in
        async for data in stream:
            received.extend(e.data for e in connection.receive_data(data) if type(e) is TextMessage)
            if received and received[-1] == b"last":
                break
        done.set()

    async with tls_server(read_frames, tmp_path) as (port, context):
        ws = ClientWebSocket(await connect(port, context), 1 << 24)
        with trio.fail_after(10):
            accepted: list[bytes] = []
            while not ws.owes():  # until the kernel's buffers are full
                message = chr(65 + len(accepted) % 26) * 65536
                assert ws.send_message_nowait(message)
                accepted.append(message.encode())
            assert not ws.send_message_nowait("overtaking")  # nothing sent: it must wait
            reading.set()
            await ws.flush()
            assert not ws.owes()
            await ws.send_message("last")
            await done.wait()
        assert received == [*accepted, b"last"]
        await ws.abort()
