"""The sans-IO connection and handshake, the error vocabulary, and the Trio adapter's ordering
rules (the direct path, one reader, fresh exceptions)."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.testing

from gateway import errors
from gateway.call.intake import Flooded, TooManyErrors
from gateway.wire import framing
from gateway.wire.connection import Connection, ConnectionState
from gateway.wire.events import BinaryMessage, Close, Ping, Pong, TextMessage
from gateway.wire.handshake import BadUpgrade, Reject, ServerHandshake
from gateway.wire.websocket import ConnectionClosed, SendTimeout, ServerWebSocket

UPGRADE = (
    b"GET /media?x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes((0x80 | opcode, 0x80 | len(payload)))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return masked(framing.OP_CLOSE, struct.pack("!H", code) + reason)


# -- Connection --


def test_the_peer_closes_first_and_we_echo_its_code():
    connection = Connection(1000)
    events = connection.receive_data(masked(framing.OP_TEXT, b"hi") + close_frame(1001, b"bye"))
    assert events == [TextMessage(b"hi"), Close(1001, "bye")]
    assert connection.state is ConnectionState.REMOTE_CLOSING
    with pytest.raises(errors.LocalProtocolError):
        connection.send_texts(["too late"])
    assert connection.send(Close(1001)) == framing.encode_close(1001)
    assert connection.state is ConnectionState.CLOSED
    assert connection.receive_data(masked(framing.OP_TEXT, b"after")) == []


def test_a_close_without_a_code_is_answered_with_1000():
    connection = Connection(1000)
    (close,) = connection.receive_data(masked(framing.OP_CLOSE, b""))
    assert close == Close(errors.CLOSE_NO_STATUS, "")
    assert connection.send(close) == framing.encode_close(errors.CLOSE_NORMAL)


def test_we_close_first_then_send_nothing_but_still_read_until_the_reply():
    connection = Connection(1000)
    assert connection.send(Close(1000, "done")) == framing.encode_close(1000, "done")
    assert connection.state is ConnectionState.LOCAL_CLOSING
    for forbidden in (lambda: connection.send_texts(["x"]), lambda: connection.send(Pong(b""))):
        with pytest.raises(errors.LocalProtocolError):
            forbidden()
    events = connection.receive_data(masked(framing.OP_BINARY, b"\x00") + close_frame(1000))
    assert events == [BinaryMessage(b"\x00"), Close(1000, "")]
    assert connection.state is ConnectionState.CLOSED
    with pytest.raises(errors.LocalProtocolError):
        connection.send(Close(1000))


def test_pings_are_events_and_pongs_are_sent_while_open():
    connection = Connection(1000)
    (ping,) = connection.receive_data(masked(framing.OP_PING, b"p"))
    assert type(ping) is Ping and ping == b"p"
    assert connection.send(Pong(ping)) == framing.encode_pong(b"p")


def test_a_framing_error_leaves_the_connection_open_for_our_close_frame():
    connection = Connection(10)
    with pytest.raises(errors.FramingError) as error:
        connection.receive_data(masked(framing.OP_TEXT, b"x" * 11))
    assert error.value.close_code == errors.CLOSE_MESSAGE_TOO_BIG
    assert isinstance(error.value, errors.PeerError)
    assert connection.state is ConnectionState.OPEN
    connection.send(Close(error.value.close_code))
    assert connection.state is ConnectionState.LOCAL_CLOSING


def test_end_closes_without_the_handshake():
    connection = Connection(10)
    connection.end()
    assert connection.state is ConnectionState.CLOSED
    assert connection.receive_data(close_frame(1000)) == []


# -- ServerHandshake --


def test_the_upgrade_request_in_pieces_then_the_101_and_the_bytes_behind_it():
    handshake = ServerHandshake()
    frame = masked(framing.OP_TEXT, b"early")
    data = UPGRADE + frame
    for i in range(0, len(UPGRADE) - 10, 10):
        handshake.receive_data(data[i : i + 10])
        assert handshake.next_request() is None
    handshake.receive_data(data[i + 10 :])
    request = handshake.next_request()
    assert request is not None
    assert request.target == "/media?x=1" and request.headers["upgrade"] == "websocket"
    response, trailing = handshake.accept()
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response  # RFC 6455 1.3
    assert trailing == frame


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (UPGRADE.replace(b"GET", b"POST"), 405),
        (UPGRADE.replace(b"Upgrade: websocket\r\n", b""), 426),
        (UPGRADE.replace(b"Version: 13", b"Version: 8"), 426),
        (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), 400),
        (b"GARBAGE\r\n\r\n", 400),
    ],
)
def test_requests_that_cannot_upgrade_earn_their_status(request_bytes, status):
    handshake = ServerHandshake()
    handshake.receive_data(request_bytes)
    with pytest.raises(BadUpgrade) as error:
        handshake.next_request()
    assert error.value.http_status == status
    assert isinstance(error.value, errors.PeerError)


def test_a_refusal_and_an_early_eof():
    handshake = ServerHandshake()
    handshake.receive_data(UPGRADE)
    assert handshake.next_request() is not None
    response = handshake.reject(Reject(401, "no token"))
    assert response.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: Bearer" in response
    assert response.endswith(b"no token")
    eof = ServerHandshake()  # the peer closed before sending anything
    eof.receive_data(b"")
    with pytest.raises(ConnectionClosed):
        eof.next_request()
    cut = ServerHandshake()  # ... or in the middle of its request: that is a bad request
    cut.receive_data(UPGRADE[:20])
    cut.receive_data(b"")
    with pytest.raises(BadUpgrade):
        cut.next_request()


# -- errors by blame --


def test_the_error_vocabulary_is_split_by_blame():
    assert Flooded is errors.Flooded and Flooded.close_code == errors.CLOSE_POLICY_VIOLATION
    assert TooManyErrors is errors.TooManyErrors
    assert TooManyErrors.close_code == errors.CLOSE_INVALID_PAYLOAD
    assert framing.FramingError is errors.FramingError
    for peer in (Flooded, TooManyErrors, errors.ProtocolError, errors.FramingError, SendTimeout):
        assert issubclass(peer, errors.PeerError) and not issubclass(peer, errors.LocalError)
    for ours in (errors.ConfigError, errors.ProcessorNotFound, errors.LocalProtocolError):
        assert issubclass(ours, errors.LocalError) and not issubclass(ours, errors.PeerError)
    assert errors.ProtocolError("not_json", "x").close_code is None  # the call's policy decides
    timeout = SendTimeout(2)
    assert (timeout.code, timeout.close_code) == (errors.CLOSE_ABNORMAL, errors.CLOSE_ABNORMAL)
    fresh = timeout.fresh()
    assert type(fresh) is SendTimeout and fresh is not timeout and str(fresh) == str(timeout)


# -- the Trio adapter --


class NowaitStream(trio.abc.Stream):
    """Takes `room` bytes from each `send_nowait`; records what was written, in order."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written = bytearray()
        self.incoming = trio.testing.MemoryReceiveStream()

    def send_nowait(self, data: bytes) -> bytes:
        taken = data[: self.room]
        self.written += taken
        return data[len(taken) :]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.incoming.receive_some(max_bytes)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Counts:
    messages_out = 0
    stop_audio_sent = 0


async def test_the_direct_path_leftover_goes_first_and_blocks_direct_writes_until_sent():
    stream = NowaitStream(room=5)
    ws = ServerWebSocket(stream, max_message_bytes=1000)
    counts = Counts()
    sink = ws.direct_sink(lambda pcm: pcm.decode(), "stop", counts)
    assert sink is not None
    assert sink.ready()
    assert not sink.send([b"frame-one"])  # the kernel took 5 bytes: the rest is owed
    assert counts.messages_out == 1
    assert not sink.ready()  # nothing may overtake the owed bytes
    stream.room = 1 << 20
    await ws.send_messages(["next"])
    assert sink.ready()
    assert sink.send_stop()  # the kernel takes it whole
    assert (counts.messages_out, counts.stop_audio_sent) == (2, 1)
    assert bytes(stream.written) == framing.encode_texts(["frame-one", "next", "stop"])
    stream.room = 3
    assert not sink.send_stop()  # a stop-audio the kernel took only part of: the rest is owed
    assert not sink.ready()
    stream.room = 1 << 20
    await ws.send_messages([])  # what the send task does when woken for the rest
    assert bytes(stream.written) == framing.encode_texts(["frame-one", "next", "stop", "stop"])
    await ws.close()
    assert not sink.ready()  # nothing follows our close frame
    memory = ServerWebSocket(trio.testing.MemorySendStream(), max_message_bytes=10)
    assert memory.direct_sink(str, "stop", counts) is None  # it cannot write without waiting


class BackloggingStream(NowaitStream):
    """Like `gateway.wire.tls.TLSStream`: `send_nowait` takes all it is given (encrypted, the
    bytes are no longer the caller's) and keeps what the kernel (`room`) did not take as its
    backlog, which the next `send_all` writes first."""

    def __init__(self, room: int) -> None:
        super().__init__(room)
        self.backlog = bytearray()

    def send_nowait(self, data: bytes) -> bytes:
        if self.backlog:
            self.written += self.backlog[: self.room]
            del self.backlog[: self.room]
            if self.backlog:
                return data  # not taken: it would overtake the backlog
        self.written += data[: self.room]
        self.backlog += data[self.room :]
        return b""

    def backlogged(self) -> bool:
        return bool(self.backlog)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.written += self.backlog + data
        self.backlog.clear()


async def test_the_direct_path_over_tls_owes_the_streams_backlog_to_the_next_write():
    stream = BackloggingStream(room=5)
    ws = ServerWebSocket(stream, max_message_bytes=1000)
    counts = Counts()
    sink = ws.direct_sink(lambda pcm: pcm.decode(), "stop", counts)
    assert sink is not None and sink.ready()
    assert not sink.send([b"frame-one"])  # all taken, part of it still the stream's backlog
    assert not sink.ready()  # nothing may overtake the backlog
    await ws.send_messages([])  # what the send task does when woken for the rest
    assert sink.ready()
    assert sink.send([b"frame-two"]) is False  # room 5 again: a backlog again
    stream.room = 1 << 20
    await ws.send_messages(["next"])  # the backlog first, then the message
    assert sink.send_stop()  # the kernel takes it whole: nothing owed
    assert sink.ready()
    assert bytes(stream.written) == framing.encode_texts(["frame-one", "frame-two", "next", "stop"])


async def test_close_waits_for_the_reader_to_see_the_reply_and_raises_fresh_copies(
    autojump_clock,
):
    stream = NowaitStream(room=1 << 20)
    ws = ServerWebSocket(stream, max_message_bytes=1000)
    received: list[object] = []

    async def reader() -> None:
        try:
            while True:
                received.extend(await ws.receive_messages())
        except ConnectionClosed as closed:
            received.append(closed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as closing:
            closing.start_soon(ws.close, 1000, "done")
            await trio.testing.wait_all_tasks_blocked()
            # the peer still talks before it answers: the reader gets the message
            stream.incoming.put_data(masked(framing.OP_TEXT, b"late") + close_frame(1000))
    assert received[0] == TextMessage(b"late")
    assert isinstance(received[1], ConnectionClosed) and received[1].code == 1000
    assert ws.closed is not None and received[1] is not ws.closed  # raised: a fresh copy
    assert ws.connection.state is ConnectionState.CLOSED
    assert trio.current_time() < 2  # did not wait for the close reply timeout


async def test_messages_before_a_violation_in_the_same_read_are_delivered_then_it_fails(
    autojump_clock,
):
    stream = NowaitStream(room=1 << 20)
    ws = ServerWebSocket(stream, max_message_bytes=1000)
    stream.incoming.put_data(
        masked(framing.OP_TEXT, b"first") + masked(framing.OP_TEXT, b"second") + b"\x81\x01x"
    )  # the last frame is not masked: a protocol error
    assert await ws.receive_messages() == [TextMessage(b"first"), TextMessage(b"second")]
    with pytest.raises(ConnectionClosed) as failed:
        await ws.receive_messages()
    assert failed.value.code == 1002
    assert bytes(stream.written).startswith(framing.encode_close(1002, "client frame not masked"))
