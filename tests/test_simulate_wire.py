"""The simulator's sans-IO client side: frames, upgrade, packets, the echo tag."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pybase64
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.acs import client as wire
from gateway.acs import codec
from gateway.acs.packets import AudioData, AudioMetadata, DtmfData
from gateway.simulate import tagging
from gateway.wire import framing

MASK = b"\x01\x02\x03\x04"


def test_client_frames_are_masked_and_the_gateway_reads_them():
    reader = framing.FrameReader(max_message_bytes=65536)
    text = wire.audio_text(bytes(640), "8:acs:x", silent=True)
    frame = wire.masked_text(text, MASK)
    assert frame[1] & 0x80  # masked, as RFC 6455 requires of clients
    assert text.encode() not in frame  # the payload is not in clear
    events = reader.receive(frame + wire.masked_close(1000, MASK))
    assert events[0] == framing.TextMessage(text.encode())
    assert isinstance(events[1], framing.Close) and events[1].code == 1000


def test_inbound_packets_decode_with_the_gateways_codec():
    meta = codec.decode(wire.metadata_text(24000))
    assert isinstance(meta, AudioMetadata)
    assert (meta.sample_rate, meta.length, meta.channels) == (24000, 960, 1)
    audio = codec.decode(wire.audio_text(b"\x01\x00" * 480, "8:acs:a", silent=False))
    assert isinstance(audio, AudioData)
    assert audio.pcm == b"\x01\x00" * 480 and audio.participant_raw_id == "8:acs:a"
    assert not audio.silent
    mixed = codec.decode(wire.audio_text(bytes(640), None, silent=True))
    assert isinstance(mixed, AudioData) and mixed.participant_raw_id is None and mixed.silent
    dtmf = codec.decode(wire.dtmf_text("#"))
    assert isinstance(dtmf, DtmfData) and dtmf.tone == "#"


def test_server_frames_joins_fragments_and_reports_ping_and_close():
    frames = wire.ServerFrames()
    text = b'{"kind":"stopAudio","stopAudio":{}}'
    first = bytes((0x01, 10)) + text[:10]  # text, not final
    rest = bytes((0x80, len(text) - 10)) + text[10:]  # continuation, final
    ping = bytes((0x89, 2)) + b"hi"
    close = framing.encode_close(1011, "boom")
    data = first + ping + rest + framing.encode_text("x" * 300) + close
    events = []
    for i in range(0, len(data), 7):  # any split of the byte stream
        events += frames.receive(data[i : i + 7])
    assert events[0] == b"hi" and isinstance(events[0], framing.Ping)
    assert events[1] == text
    assert events[2] == b"x" * 300
    assert isinstance(events[3], framing.Close) and (events[3].code, events[3].reason) == (
        1011,
        "boom",
    )


def test_a_masked_server_frame_is_a_protocol_error():
    with pytest.raises(framing.FramingError):
        wire.ServerFrames().receive(wire.masked_text("hi", MASK))


def _response(status: str, accept: bytes) -> bytearray:
    return bytearray(
        f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept.decode()}\r\n\r\n".encode()
        + b"\x81\x02hi"
    )


def test_upgrade_request_and_response():
    request, accept = wire.upgrade_request("h:1", "/ws?x=1", [("Authorization", "Bearer t")])
    head = request.decode()
    assert head.startswith("GET /ws?x=1 HTTP/1.1\r\nHost: h:1\r\n")
    assert "\r\nAuthorization: Bearer t\r\n" in head and head.endswith("\r\n\r\n")
    key = head.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0].encode()
    expected = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    assert accept == expected
    response = _response("101 Switching Protocols", accept)
    assert wire.parse_upgrade_response(response[:20], accept) is None  # incomplete
    used = wire.parse_upgrade_response(response, accept)
    assert response[used:] == b"\x81\x02hi"  # what follows the head is the first frame
    with pytest.raises(wire.UpgradeRefused) as refused:
        wire.parse_upgrade_response(_response("503 Service Unavailable", accept), accept)
    assert refused.value.status == 503
    with pytest.raises(wire.UpgradeRefused):
        wire.parse_upgrade_response(_response("101 Switching Protocols", b"wrong"), accept)


@given(st.binary(min_size=640, max_size=640), st.integers(0, 1_000_000))
def test_the_tag_survives_base64_and_changes_only_low_bits(pcm, seq):
    tagged = tagging.tag(pcm, seq)
    assert len(tagged) == len(pcm) and tagged[64:] == pcm[64:]
    assert all(a >> 1 == b >> 1 for a, b in zip(pcm[0:64:2], tagged[0:64:2], strict=True))
    assert tagged[1:64:2] == pcm[1:64:2]  # high bytes untouched: at most one step of 32768
    assert tagging.read_tag(pybase64.b64encode_as_string(tagged)) == seq & 0xFFFF


def test_untagged_audio_is_almost_never_read_as_tagged():
    import random

    rng = random.Random(7)
    clips = [bytes(rng.getrandbits(8) for _ in range(640)) for _ in range(2000)]
    found = [tagging.read_tag(pybase64.b64encode_as_string(c)) for c in clips]
    assert sum(f is not None for f in found) <= 1
    assert tagging.read_tag(pybase64.b64encode_as_string(bytes(640))) is None  # silence
    assert tagging.read_tag("short") is None


def test_classify_and_length_without_decoding():
    pcm = bytes(range(256)) * 2 + b"\x01\x02"
    data = pybase64.b64encode_as_string(pcm)
    audio = orjson.dumps({"kind": "audioData", "audioData": {"data": data}, "stopAudio": {}})
    assert wire.classify(audio) == (wire.AUDIO, data)
    assert tagging.b64_pcm_bytes(data) == len(pcm)
    assert tagging.b64_pcm_bytes(pybase64.b64encode_as_string(b"abcd")) == 4
    assert wire.classify(b'{"kind":"stopAudio","stopAudio":{}}') == (wire.STOP, "")
    assert wire.classify(b"not json")[0] == wire.OTHER
    assert wire.classify(b'{"kind":"audioData"}')[0] == wire.OTHER
    assert wire.classify(b"[1]")[0] == wire.OTHER


@pytest.mark.parametrize("participant", [None, '8:acs:"quoted"\u00e9'])
def test_fast_audio_frames_are_the_same_messages(participant):
    frames = tagging.AudioFrames(key=b"\x9a\x01\xff\x37")
    reader = framing.FrameReader(max_message_bytes=65536)
    clip = [bytes(range(256)) * 2 + bytes(128), bytes(640), b"\x05\x00" * 480]
    for seq, pcm in enumerate(clip * 3):  # cached parts reused across frames
        for silent in (False, True):
            frame = frames.frame(pcm, seq, participant, silent)
            (message,) = reader.receive(frame)
            assert message.data.decode() == frames.text(pcm, seq, participant, silent)
            packet = codec.decode(message)
            assert isinstance(packet, AudioData)
            assert packet.pcm == tagging.tag(pcm, seq)
            assert (packet.participant_raw_id, packet.silent) == (participant, silent)
            assert tagging.read_tag(packet.data) == seq


@pytest.mark.parametrize("participant", [None, "", '8:acs:"quoted"\u00e9'])
@pytest.mark.parametrize("silent", [False, True])
def test_packets_as_dicts_and_as_text_are_the_same_json(participant, silent):
    pcm = bytes(range(256)) * 2 + bytes(128)
    assert orjson.dumps(wire.audio_packet(pcm, participant, silent)).decode() == wire.audio_text(
        pcm, participant, silent
    )
    frames = tagging.AudioFrames()
    assert frames.text(pcm, 9, participant, silent) == wire.audio_text(
        tagging.tag(pcm, 9), participant, silent
    )
    assert orjson.loads(wire.metadata_text(24000, "sub")) == wire.metadata_packet(24000, "sub")
    assert orjson.loads(wire.dtmf_text("#")) == wire.dtmf_packet("#")


def test_acs_headers_and_a_reproducible_upgrade():
    assert wire.acs_headers("conn", "corr", "t0ken") == [
        ("x-ms-call-connection-id", "conn"),
        ("x-ms-call-correlation-id", "corr"),
        ("Authorization", "Bearer t0ken"),
    ]
    assert wire.acs_headers(None, None) == []
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    request, accept = wire.upgrade_request("x", "/", (), key)
    assert request == wire.upgrade_request("x", "/", (), key)[0]
    assert accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3's example


_FORMS = [
    # (message, form, what it is), every spelling Microsoft's SDKs and samples send
    ('{"kind":"stopAudio","stopAudio":{}}', "sdk", "stopAudio"),
    ('{"Kind":"AudioData","AudioData":{"Data":"AAAA"},"StopAudio":null}', "pascal", "audioData"),
    ('{"Kind":"AudioData","AudioData":{"Data":"AAAA"}}', "pascal", "audioData"),
    (
        '{"Kind":"AudioData","AudioData":{"Data":"AAAA","Timestamp":null,"Participant":null,'
        '"IsSilent":false},"StopAudio":null}',
        "pascal",
        "audioData",
    ),
    ('{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}', "pascal", "stopAudio"),
    ('{"Kind":"StopAudio","StopAudio":{}}', "pascal", "stopAudio"),
    (
        '{"kind":"AudioData","audioData":{"data":"AAAA","timestamp":null,"participant":null,'
        '"isSilent":false},"stopAudio":null}',
        "java",
        "audioData",
    ),
    ('{"kind":"AudioData","audioData":{"data":"AAAA"}}', "java", "audioData"),
    ('{"kind":"StopAudio","stopAudio":{}}', "java", "stopAudio"),
    ('{"kind":"audioData","audioData":{"data":"AAAA"},"mark":{}}', "unrecognised", "other"),
    ('{"kind":"playAudio","playAudio":{"data":"AAAA"}}', "unrecognised", "other"),
    ('{"Kind":"AudioData","audioData":{"data":"AAAA"}}', "unrecognised", "other"),
    ('{"kind":"audioData","audioData":{"data":5}}', "unrecognised", "other"),
    ('{"kind":"stopAudio","stopAudio":[]}', "unrecognised", "other"),
    ('"audioData"', "unrecognised", "other"),
]


@pytest.mark.parametrize(("message", "form", "what"), _FORMS)
def test_every_outbound_form_is_recognised_and_named(message, form, what):
    kind, data, named = wire.classify_form(message)
    assert (named, kind) == (form, what)
    assert data == ("AAAA" if kind == wire.AUDIO else "")


def test_the_gateways_own_messages_are_the_sdk_form():
    from gateway.acs import codec

    assert wire.classify_form(codec.encode_audio(b"\x01\x00" * 320))[2] == wire.SDK
    assert wire.classify_form(codec.STOP_AUDIO_MESSAGE) == (wire.STOP, "", wire.SDK)


def test_an_exact_echo_is_told_from_an_altered_one():
    frames = tagging.AudioFrames()
    pcm = bytes(range(256)) * 2 + bytes(128)
    sent = frames.text(pcm, 7, None, False)
    data = orjson.loads(sent)["audioData"]["data"]
    assert tagging.read_tag(data) == 7 and frames.is_echo(data, pcm, 7)
    for at in (1, 40, 300):  # inside the head (beside the tag), and after it
        altered = bytearray(tagging.tag(pcm, 7))
        altered[at] ^= 1
        assert not frames.is_echo(pybase64.b64encode_as_string(bytes(altered)), pcm, 7)
    assert not frames.is_echo(data, pcm, 8) and not frames.is_echo(data, pcm[::-1], 7)
    assert not frames.is_echo(data[:-4], pcm, 7) and not frames.is_echo(data + "AAAA", pcm, 7)
