"""The client side of the wire (the bridge's connection to the model) against a hostile server.

Whatever bytes the server sends after the upgrade (frames of every kind, valid or broken, cut
anywhere, then the end of the stream), `ClientWebSocket.get_message()` returns the messages
that wsproto, the reference, reads before the first violation, then raises `ConnectionClosed`
with the code wsproto names for that violation (or the server's own close code, or 1006 when
the stream just ends); nothing else escapes, and nothing hangs. And whatever the server answers
the upgrade with, `connect()` returns or raises `UpgradeRefused` or `ConnectionClosed`.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from gateway.errors import ConnectionClosed
from gateway.wire.client import UpgradeRefused, connect
from gateway.wire.handshake import accept_key

CAP = 4096  # the client's max_message_bytes here

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = False):
    """One frame as a server writes it (unmasked, unless `masked`: a violation)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    if masked:
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


texts = st.text(max_size=200).map(lambda t: t.encode())
not_utf8 = st.sampled_from([b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
close_codes = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999]),
    st.sampled_from([0, 999, 1004, 1005, 1006, 1012, 1013, 1015, 1016, 2999, 5000]),
    # 1014 (IANA's "bad gateway") is one wsproto refuses: see the test of close codes below
    st.integers(0, 65535).filter(lambda code: code != 1014),
)

FRAMES = st.one_of(
    st.builds(lambda p: frame(OP_TEXT, p), texts),
    st.builds(lambda p: frame(OP_BINARY, p), st.binary(max_size=300)),
    st.builds(lambda p: frame(OP_PING, p), st.binary(max_size=125)),
    st.builds(lambda p: frame(OP_PONG, p), st.binary(max_size=125)),
    st.builds(  # a message in fragments, perhaps with a ping between
        lambda parts, ping: (
            frame(OP_TEXT, parts[0], fin=False)
            + (frame(OP_PING, b"between") if ping else b"")
            + b"".join(frame(OP_CONT, p, fin=False) for p in parts[1:-1])
            + frame(OP_CONT, parts[-1])
        ),
        st.lists(st.binary(max_size=40).filter(bytes.isascii), min_size=2, max_size=4),
        st.booleans(),
    ),
    st.builds(
        lambda code, reason: frame(OP_CLOSE, struct.pack("!H", code) + reason),
        close_codes,
        st.sampled_from([b"", b"bye", b"\xff"]),
    ),
    st.just(frame(OP_CLOSE, b"")),
    # violations
    st.builds(lambda p: frame(OP_TEXT, p), not_utf8),
    st.just(frame(OP_TEXT, b"x" * (CAP + 1))),
    st.just(frame(OP_TEXT, b"x", masked=True)),
    st.just(frame(OP_TEXT, b"x", rsv=0x40)),
    st.sampled_from([frame(op, b"x") for op in (0x3, 0x7, 0xB, 0xF)]),
    st.just(frame(OP_PING, b"p" * 126)),
    st.just(frame(OP_PING, b"p", fin=False)),
    st.just(frame(OP_CONT, b"orphan")),
    st.just(frame(OP_TEXT, b"open", fin=False) + frame(OP_TEXT, b"another")),
    st.just(frame(OP_CLOSE, b"\x03")),
    st.binary(min_size=1, max_size=30),  # garbage
)


def reference(data: bytes) -> tuple[list[bytes], int]:
    """What wsproto's client-side parser makes of `data`: the messages before it stops, and
    the close code it ends with (the server's close, the violation's, or 1006 at the end)."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    messages: list[bytes] = []
    parts: list[bytes] = []
    try:
        for f in proto.received_frames():
            if f.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                payload = f.payload.encode() if isinstance(f.payload, str) else f.payload
                parts.append(bytes(payload))
                if sum(map(len, parts)) > CAP:
                    return messages, 1009
                if f.message_finished:
                    messages.append(b"".join(parts))
                    parts = []
            elif f.opcode is Opcode.CLOSE:
                code, _reason = f.payload
                return messages, int(code)
    except ParseFailed as failed:
        return messages, int(failed.code)
    return messages, 1006


async def client_reads(data: bytes, cuts: list[int]) -> tuple[list[bytes], int]:
    """A client that reads `data` from the server, delivered in pieces cut at `cuts`, then
    the end of the stream: the messages it got, and the code of the ConnectionClosed."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    messages: list[bytes] = []
    code = -1
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                request = b""
                while not request.endswith(b"\r\n\r\n"):
                    request += await server_stream.receive_some(65536)
                key = [
                    line.split(b":", 1)[1].strip()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                ][0]
                accept = accept_key(key)
                await server_stream.send_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                previous = 0
                try:
                    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
                        if cut > previous:
                            await server_stream.send_all(data[previous:cut])
                            await trio.testing.wait_all_tasks_blocked()  # read apart
                        previous = cut
                    await server_stream.send_eof()
                    while await server_stream.receive_some(65536):  # its pongs and close
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client gave up first

            nursery.start_soon(serve)
            client = await connect(client_stream, "h", "/", [], max_message_bytes=CAP)
            try:
                while True:
                    messages.append(await client.get_message())
            except ConnectionClosed as closed:
                code = closed.code
            await client.abort()
    return messages, code


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frames=st.lists(FRAMES, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_whatever_the_server_sends_the_client_reads_what_the_reference_reads(frames, cuts):
    data = b"".join(frames)
    got = trio.run(client_reads, data, cuts)
    assert got == reference(data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    answer=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda status, head, cut: (f"HTTP/1.1 {status} X\r\n".encode() + head + b"\r\n\r\n")[
                :cut
            ],
            st.integers(100, 599),
            st.sampled_from(
                [b"", b"Upgrade: websocket\r\nConnection: Upgrade", b"Sec-WebSocket-Accept: x"]
            ),
            st.integers(0, 400),
        ),
    )
)
def test_whatever_the_server_answers_the_upgrade_connect_fails_cleanly(answer):
    async def attempt() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await server_stream.receive_some(65536)
                    await server_stream.send_all(answer)
                    await server_stream.send_eof()

                nursery.start_soon(serve)
                with pytest.raises((UpgradeRefused, ConnectionClosed)):
                    await connect(client_stream, "h", "/", [], max_message_bytes=CAP)

    trio.run(attempt)
