"""The sans-IO frame reader against wsproto's client-side encoder as the reference."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from gateway.wire import framing


def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])  # masks every frame, as RFC 6455 asks


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def test_text_and_binary_messages_of_every_header_size():
    proto = client()
    reader = framing.FrameReader(max_message_bytes=200_000)
    texts = ["", "a", "é" * 100, "x" * 125, "y" * 126, "z" * 65535, "w" * 70000]
    data = b"".join(proto.send_data(t) for t in texts) + proto.send_data(b"\x00\xff" * 10)
    events = reader.receive(data)
    expected = [framing.TextMessage(t.encode()) for t in texts]
    assert events == expected + [framing.BinaryMessage(b"\x00\xff" * 10)]
    assert events[0] != framing.BinaryMessage(b"")  # text and binary are told apart by type


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.text(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_any_split_of_the_stream_gives_the_same_messages(messages, cuts):
    proto = client()
    data = b"".join(proto.send_data(m) for m in messages)
    reader = framing.FrameReader(max_message_bytes=10_000)
    events = []
    previous = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        events += reader.receive(data[previous:cut])
        previous = cut
    assert events == [framing.TextMessage(m.encode()) for m in messages]


def test_fragments_with_control_frames_between():
    reader = framing.FrameReader(max_message_bytes=1000)
    data = (
        masked(framing.OP_TEXT, b"hel", fin=False)
        + masked(framing.OP_PING, b"are you there")
        + masked(framing.OP_CONTINUATION, b"lo ", fin=False)
        + masked(framing.OP_PONG, b"")
        + masked(framing.OP_CONTINUATION, b"world")
    )
    events = reader.receive(data)
    assert events[0] == b"are you there" and type(events[0]) is framing.Ping
    assert events[1] == framing.TextMessage(b"hello world")


def test_close_frame_code_and_reason():
    proto = client()
    from wsproto.frame_protocol import CloseReason

    reader = framing.FrameReader(max_message_bytes=1000)
    (event,) = reader.receive(proto.close(CloseReason.GOING_AWAY, "bye"))
    assert isinstance(event, framing.Close) and (event.code, event.reason) == (1001, "bye")
    (empty,) = framing.FrameReader(100).receive(masked(framing.OP_CLOSE, b""))
    assert empty.code == 1005


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes((0x81, 0x01)) + b"a", 1002),  # not masked
        (masked(framing.OP_TEXT, b"a", rsv=0x40), 1002),  # RSV1 without an extension
        (masked(0x3, b"a"), 1002),  # reserved opcode
        (masked(framing.OP_PING, b"a", fin=False), 1002),  # fragmented control frame
        (masked(framing.OP_PING, b"a" * 126), 1002),  # control frame too long
        (masked(framing.OP_CONTINUATION, b"a"), 1002),  # continuation of nothing
        (masked(framing.OP_TEXT, b"a", fin=False) + masked(framing.OP_TEXT, b"b"), 1002),
        (masked(framing.OP_TEXT, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (masked(framing.OP_CLOSE, b"\x03"), 1002),  # one-byte close payload
        (masked(framing.OP_TEXT, b"a" * 101), 1009),  # over max_message_bytes
        (
            masked(framing.OP_TEXT, b"a" * 60, fin=False)
            + masked(framing.OP_CONTINUATION, b"a" * 60),
            1009,
        ),
    ],
)
def test_protocol_violations_name_the_close_code(data, code):
    with pytest.raises(framing.FramingError) as error:
        framing.FrameReader(max_message_bytes=100).receive(data)
    assert error.value.close_code == code


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999])
def test_close_codes_a_peer_may_send(code):
    (event,) = framing.FrameReader(100).receive(masked(framing.OP_CLOSE, struct.pack("!H", code)))
    assert isinstance(event, framing.Close) and event.code == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_a_peer_may_not_send_are_a_protocol_error(code):
    """1004 is reserved; 1005, 1006 and 1015 only report what happened locally; the rest are
    unassigned (RFC 6455 section 7.4)."""
    with pytest.raises(framing.FramingError) as error:
        framing.FrameReader(100).receive(masked(framing.OP_CLOSE, struct.pack("!H", code)))
    assert error.value.close_code == 1002


def test_a_violation_carries_the_events_the_same_bytes_completed_before_it():
    data = masked(framing.OP_TEXT, b"a") + masked(framing.OP_PING, b"p") + masked(0x3, b"x")
    with pytest.raises(framing.FramingError) as error:
        framing.FrameReader(100).receive(data)
    assert error.value.events == [framing.TextMessage(b"a"), framing.Ping(b"p")]


def test_a_huge_declared_length_fails_before_the_payload_arrives():
    header = bytes((0x81, 0xFF)) + struct.pack("!Q", 2**40) + b"mask"
    with pytest.raises(framing.FramingError) as error:
        framing.FrameReader(max_message_bytes=65536).receive(header)
    assert error.value.close_code == 1009


def test_server_frames_are_what_a_client_engine_reads():
    server_bytes = framing.encode_texts(["hi", "é" * 200, "x" * 70000])
    server_bytes += framing.encode_pong(b"p") + framing.encode_close(1000, "done")
    proto = client()
    proto.receive_bytes(server_bytes)
    frames = list(proto.received_frames())
    assert [f.opcode for f in frames] == [Opcode.TEXT] * 3 + [Opcode.PONG, Opcode.CLOSE]
    assert [f.payload for f in frames[:3]] == ["hi", "é" * 200, "x" * 70000]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2100), st.binary(min_size=4, max_size=4))
def test_unmask_is_the_rfc_xor_in_both_implementations(data: bytes, mask: bytes) -> None:
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert framing._unmask_python(data, mask) == expected
    assert framing.unmask(data, mask) == expected
    assert framing.unmask(bytearray(data), mask) == expected
    assert type(framing.unmask(bytearray(data), mask)) is bytes
