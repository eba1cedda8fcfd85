"""The client side of the wire (`gateway.wire.client`) against the server side
(`ServerWebSocket`) over memory streams: the upgrade with extra headers and its refusals,
masking, fragmentation, ping/pong, close codes both ways, and the size cap; and the realtime
bridge's upstream opened over TLS."""

from __future__ import annotations

import socket

import pybase64
import pytest
import trio
import trio.testing

from gateway.acs import client as acs
from gateway.errors import ConnectionClosed, LocalProtocolError
from gateway.processors.realtime.options import RealtimeOptions
from gateway.processors.realtime.upstream import Unavailable, open_upstream
from gateway.testing import open_gateway
from gateway.wire import framing
from gateway.wire.client import ClientWebSocket, UpgradeRefused, connect
from gateway.wire.client_handshake import upgrade_request
from gateway.wire.connection import Connection, ConnectionState
from gateway.wire.events import Ping, Pong, TextMessage
from gateway.wire.transport import SocketTransport
from gateway.wire.websocket import Reject, ServerWebSocket
from tests.daemons import throwaway_tls

CAP = 1000


async def open_pair(
    nursery: trio.Nursery, *, max_message_bytes: int = CAP
) -> tuple[ClientWebSocket, ServerWebSocket, dict[str, str]]:
    """A client and a server WebSocket joined by memory streams; the headers the server saw."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = ServerWebSocket(server_stream, max_message_bytes=CAP)
    seen: dict[str, str] = {}

    async def serve() -> None:
        request = await server.read_handshake()
        seen.update(request.headers, target=request.target)
        await server.accept()

    nursery.start_soon(serve)
    client = await connect(
        client_stream,
        "model.example",
        "/v1/realtime?model=m",
        [("api-key", "k"), ("Authorization", "Bearer t")],
        max_message_bytes=max_message_bytes,
    )
    return client, server, seen


async def read_until_closed(server: ServerWebSocket, closes: list[ConnectionClosed]) -> None:
    """The server's reader: messages dropped, how the connection closed kept."""
    try:
        while True:
            await server.receive_messages()
    except ConnectionClosed as exc:
        closes.append(exc)


def raw_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return bytes(((0x80 if fin else 0) | opcode, len(payload))) + payload


async def test_handshake_headers_and_messages_both_ways():
    async with trio.open_nursery() as nursery:
        client, server, seen = await open_pair(nursery)
        assert seen["target"] == "/v1/realtime?model=m"
        assert seen["api-key"] == "k" and seen["authorization"] == "Bearer t"
        assert seen["host"] == "model.example"
        await client.send_message('{"type":"session.update"}')
        await client.send_message("é" * 10)
        received: list[bytes] = []
        while len(received) < 2:
            received += [m.data for m in await server.receive_messages()]
        assert received == [b'{"type":"session.update"}', "é".encode() * 10]
        await server.send_messages(["one", "two"])
        assert await client.get_message() == b"one"
        assert await client.get_message() == b"two"


def test_client_frames_are_masked_with_fresh_keys():
    connection = Connection(CAP, client=True)
    first, second = connection.send_text("hello"), connection.send_text("hello")
    for frame in (first, second):
        assert frame[0] == 0x81 and frame[1] == 0x80 | 5  # final text frame, mask bit set
        assert framing.unmask(frame[6:], frame[2:6]) == b"hello"
    assert first[2:6] != second[2:6]
    ping = connection.send(Ping(b"p"))
    assert ping[0] == 0x89 and ping[1] & 0x80
    # the server side reads them; a masked frame from a server is refused
    assert Connection(CAP).receive_data(first) == [TextMessage(b"hello")]
    with pytest.raises(framing.FramingError) as refused:
        Connection(CAP, client=True).receive_data(first)
    assert refused.value.close_code == 1002


def test_the_server_side_never_pings():
    with pytest.raises(LocalProtocolError):
        Connection(CAP).send(Ping(b"x"))


async def test_fragmented_message_with_a_ping_between_fragments():
    client_stream, peer = trio.testing.memory_stream_pair()
    client = ClientWebSocket(client_stream, CAP)
    await peer.send_all(
        raw_frame(framing.OP_TEXT, b"abc", fin=False)
        + raw_frame(framing.OP_PING, b"hi")
        + raw_frame(framing.OP_CONTINUATION, b"def")
    )
    assert await client.get_message() == b"abcdef"
    pong = await peer.receive_some(100)  # answered while the message was still open
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2
    assert framing.unmask(pong[6:], pong[2:6]) == b"hi"


async def test_ping_waits_for_the_pong_that_the_reader_sees():
    async with trio.open_nursery() as nursery:
        client, server, _ = await open_pair(nursery)

        async def read_client() -> None:
            await client.get_message()

        async def read_server() -> None:
            while True:
                await server.receive_messages()  # answers pings

        nursery.start_soon(read_client)
        nursery.start_soon(read_server)
        with trio.fail_after(1):
            await client.ping()
            await client.ping()
        nursery.cancel_scope.cancel()


async def test_a_ping_unanswered_until_the_connection_closes_raises():
    client_stream, peer = trio.testing.memory_stream_pair()
    client = ClientWebSocket(client_stream, CAP)
    failures: list[tuple[str, int]] = []

    async def call(name: str) -> None:
        try:
            await getattr(client, name)()
        except ConnectionClosed as exc:
            failures.append((name, exc.code))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "get_message")
        nursery.start_soon(call, "ping")
        await trio.testing.wait_all_tasks_blocked()
        await peer.send_all(raw_frame(framing.OP_CLOSE, b"\x03\xe9"))  # 1001
    assert sorted(failures) == [("get_message", 1001), ("ping", 1001)]


async def test_the_server_closing_reaches_the_client_with_its_code():
    async with trio.open_nursery() as nursery:
        client, server, _ = await open_pair(nursery)
        await server.send_messages(["last words"])
        nursery.start_soon(server.close, 1001, "going away")
        assert await client.get_message() == b"last words"  # what came before the close
        with pytest.raises(ConnectionClosed) as closed:
            await client.get_message()
        assert (closed.value.code, closed.value.reason) == (1001, "going away")
        await trio.testing.wait_all_tasks_blocked()
        assert server.connection.state is ConnectionState.CLOSED  # the client echoed it
        with pytest.raises(ConnectionClosed):
            await client.send_message("too late")


async def test_the_client_closing_completes_the_handshake():
    async with trio.open_nursery() as nursery:
        client, server, _ = await open_pair(nursery)
        failures: list[ConnectionClosed] = []
        nursery.start_soon(read_until_closed, server, failures)
        with trio.fail_after(1):
            await client.aclose(1000, "call ended")
        await trio.testing.wait_all_tasks_blocked()
        assert [(f.code, f.reason) for f in failures] == [(1000, "call ended")]
        assert client.closed is not None and client.closed.code == 1000


async def test_a_message_over_the_cap_is_refused_with_1009():
    async with trio.open_nursery() as nursery:
        client, server, _ = await open_pair(nursery, max_message_bytes=100)
        seen: list[ConnectionClosed] = []
        nursery.start_soon(read_until_closed, server, seen)
        await server.send_messages(["x" * 101])
        with pytest.raises(ConnectionClosed) as closed:
            await client.get_message()
        assert closed.value.code == 1009
        await trio.testing.wait_all_tasks_blocked()
        assert [exc.code for exc in seen] == [1009]  # the client told the server why


async def test_a_refused_upgrade_raises_with_its_status():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = ServerWebSocket(server_stream, max_message_bytes=CAP)

    async def refuse() -> None:
        await server.read_handshake()
        await server.reject(Reject(401, "invalid api key"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse)
        with pytest.raises(UpgradeRefused) as refused:
            await connect(client_stream, "h", "/", max_message_bytes=CAP)
    assert refused.value.status == 401


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n",
    ],
)
async def test_a_101_with_the_wrong_answer_is_refused(answer):
    client_stream, peer = trio.testing.memory_stream_pair()

    async def answer_it() -> None:
        await peer.receive_some(4096)
        await peer.send_all(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_it)
        with pytest.raises(UpgradeRefused) as refused:
            await connect(client_stream, "h", "/", max_message_bytes=CAP)
    assert refused.value.status == 101


async def test_eof_during_the_upgrade_is_a_closed_connection():
    client_stream, peer = trio.testing.memory_stream_pair()

    async def hang_up() -> None:
        await peer.receive_some(4096)
        await peer.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        with pytest.raises(ConnectionClosed) as closed:
            await connect(client_stream, "h", "/", max_message_bytes=CAP)
    assert closed.value.code == 1006


def test_pongs_are_events_only_on_the_client_side():
    pong = raw_frame(framing.OP_PONG, b"\x00\x00\x00\x01")
    assert Connection(CAP, client=True).receive_data(pong) == [Pong(b"\x00\x00\x00\x01")]
    masked_pong = framing.masked_frame(framing.OP_PONG, b"x", b"abcd")
    assert Connection(CAP).receive_data(masked_pong) == []


async def test_the_bridge_upstream_over_tls_against_the_gateway(tmp_path, monkeypatch):
    """`open_upstream` over wss:// (trio.SSLStream) to the gateway's own echo server: TLS, the
    upgrade with the key header, masked frames out and the echoed audio back."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "k")
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    async with open_gateway(tls_certfile=str(certfile), tls_keyfile=str(keyfile)) as server:
        endpoint = f"wss://127.0.0.1:{server.port}"
        options = RealtimeOptions(endpoint=endpoint, api_key_env="TEST_UPSTREAM_KEY")
        ws = await open_upstream(options, client_context)
        try:
            pcm = bytes(range(256)) * 5
            await ws.send_message(acs.metadata_text(16000))
            await ws.send_message(acs.audio_text(pcm, None, False))
            with trio.fail_after(5):
                while True:
                    what, data = acs.classify(await ws.get_message())
                    if what == acs.AUDIO:
                        break
            assert pybase64.b64decode(data) == pcm[: len(pybase64.b64decode(data))]
        finally:
            await ws.aclose()
        with pytest.raises(Unavailable) as unverified:  # the system's CAs do not know it
            await open_upstream(options)
        assert "cannot connect to 127.0.0.1" in unverified.value.reason


def test_a_header_with_a_line_break_is_refused_before_sending():
    with pytest.raises(ValueError):
        upgrade_request("h", "/", [("api-key", "k\r\nX-Injected: 1")])


@pytest.mark.parametrize("size", [125, 1023, 1024, 5001, 70000])
def test_masked_frames_of_every_size_read_back(size):
    """Masked frames of every header size read back as sent."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = Connection(1 << 20, client=True).send_text(payload.decode("latin-1"))
    [message] = Connection(1 << 20).receive_data(frame)
    assert message == TextMessage(payload.decode("latin-1").encode())


def socket_pair() -> tuple[ClientWebSocket, socket.socket]:
    """A client WebSocket over a `SocketTransport` with small kernel buffers, and the raw
    socket of its peer (which reads the masked frames with a server-side `Connection`)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    return ClientWebSocket(SocketTransport(ours), CAP * 1000), theirs


async def read_messages(
    peer: socket.socket, count: int, connection: Connection | None = None
) -> list[bytes]:
    """The next `count` messages; a frame torn or out of order fails, a missing one times out."""
    connection = connection or Connection(CAP * 1000)
    messages: list[bytes] = []
    with trio.fail_after(10):  # real sockets: a generous bound, never reached when it works
        while len(messages) < count:
            await trio.lowlevel.wait_readable(peer)
            events = connection.receive_data(peer.recv(65536))
            messages += [e.data for e in events if isinstance(e, TextMessage)]
    return messages


async def test_send_message_nowait_writes_at_once_when_nothing_is_ahead():
    client, peer = socket_pair()
    with peer:
        assert client.send_message_nowait("first") and not client.owes()
        await client.send_message("second")
        assert await read_messages(peer, 2) == [b"first", b"second"]
        await client.abort()


async def test_what_the_kernel_did_not_take_goes_first_in_the_next_write():
    """A direct write the kernel takes part of is taken whole: the rest is owed, no further
    direct write may overtake it, and the next write (a flush, or any message) sends it first.
    The peer reads every message whole and in order."""
    client, peer = socket_pair()
    with peer:
        big = "x" * 200_000
        assert client.send_message_nowait(big)
        assert client.owes()
        peer_side = Connection(CAP * 1000)
        assert peer_side.receive_data(peer.recv(65536)) == []  # room in the kernel again
        assert not client.send_message_nowait("overtaking")  # nothing sent: it must wait
        async with trio.open_nursery() as nursery:

            async def peer_reads() -> None:
                messages = await read_messages(peer, 2, peer_side)
                assert messages == [big.encode(), b"after"]

            nursery.start_soon(peer_reads)
            await client.send_message("after")
            assert not client.owes()
        assert client.send_message_nowait("last")  # the peer has read all: direct again
        assert await read_messages(peer, 1) == [b"last"]
        await client.abort()


async def test_send_message_nowait_never_overtakes_a_write_in_progress():
    client, peer = socket_pair()
    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_message, "y" * 200_000)  # waits for the peer
            await trio.testing.wait_all_tasks_blocked()
            assert not client.send_message_nowait("overtaking")
            assert await read_messages(peer, 1) == [b"y" * 200_000]
        assert client.send_message_nowait("then")
        assert await read_messages(peer, 1) == [b"then"]
        await client.abort()


async def test_flush_sends_what_is_owed_and_nothing_else():
    client, peer = socket_pair()
    with peer:
        assert client.send_message_nowait("z" * 200_000) and client.owes()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.flush)
            assert await read_messages(peer, 1) == [b"z" * 200_000]
        assert not client.owes()
        await client.flush()  # nothing owed: nothing written
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(1)
        await client.abort()


async def test_send_message_nowait_declines_without_a_socket_or_once_closing():
    async with trio.open_nursery() as nursery:
        client, server, _ = await open_pair(nursery)  # memory streams: no direct write
        assert not client.send_message_nowait("no") and not client.owes()
        await client.send_message("yes")
        assert [m.data for m in await server.receive_messages()] == [b"yes"]
        nursery.cancel_scope.cancel()
    client, peer = socket_pair()
    with peer:
        await client.abort()
        assert not client.send_message_nowait("after the end")
