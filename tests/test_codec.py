"""The codec: every inbound kind and edge case of docs/protocol.md, and the official
JS SDK's own output (tests/oracle) as the reference for outbound bytes and inbound values."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pybase64
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.acs import codec
from gateway.acs.packets import (
    AudioData,
    AudioMetadata,
    DtmfData,
    OutboundAudio,
    StopAudio,
    TranscriptionData,
    TranscriptionMetadata,
)
from gateway.errors import ProtocolError

ORACLE = Path(__file__).parent / "oracle" / "sdk_fixtures.json"
FIXTURES = json.loads(ORACLE.read_text())
PCM = bytes(range(256)) * 2 + bytes(128)  # 640 bytes
B64 = pybase64.b64encode_as_string(PCM)
ACS_ID = "8:acs:3d20e1de-0f28-41c5-84c4-4a7e0a6c1b3e_00000020-aaaa-bbbb-cccc-000000000000"


def reason(message: str | bytes) -> str:
    with pytest.raises(ProtocolError) as error:
        codec.decode(message)
    return error.value.reason


# -- outbound: byte for byte what the SDK sends --


@pytest.mark.parametrize("case", FIXTURES["outbound"], ids=lambda c: f"{c['bytes']}B")
def test_outbound_audio_is_the_sdk_bytes(case):
    assert codec.encode_audio_b64(case["data_b64"]) == case["json"]
    pcm = pybase64.b64decode(case["data_b64"])
    assert codec.encode_audio(pcm) == case["json"]
    if len(pcm) % 2 == 0:
        assert codec.encode(OutboundAudio(pcm)) == case["json"]


def test_stop_audio_is_the_sdk_bytes():
    assert codec.STOP_AUDIO_MESSAGE == FIXTURES["stop"] == '{"kind":"stopAudio","stopAudio":{}}'
    assert codec.encode(StopAudio()) == FIXTURES["stop"]


# -- inbound: the same values the SDK reads, and tolerance where the SDK crashes --


def _sdk_view(packet) -> dict:
    """Our packet in the SDK's names, for the fields the SDK returns."""
    match packet:
        case AudioMetadata():
            return {
                "subscriptionId": packet.subscription_id,
                "encoding": packet.encoding,
                "sampleRate": packet.sample_rate,
                "channels": packet.channels,
            }
        case AudioData():
            view = {"data": packet.data, "timestamp": packet.timestamp, "isSilent": packet.silent}
            if packet.participant_raw_id is not None:
                view["participant"] = packet.participant_raw_id
            return view
        case DtmfData():
            return {"data": packet.tone}
        case TranscriptionMetadata():
            return {
                "subscriptionId": packet.subscription_id,
                "locale": packet.locale,
                "callConnectionId": packet.call_connection_id,
                "correlationId": packet.correlation_id,
                "speechRecognitionModelEndpointId": packet.speech_recognition_model_endpoint_id,
            }
        case TranscriptionData():
            return {
                "text": packet.text,
                "format": packet.format,
                "confidence": packet.confidence,
                "offsetInTicks": packet.offset_ticks,
                "durationInTicks": packet.duration_ticks,
                "words": [
                    {
                        "text": w.text,
                        "offsetInTicks": w.offset_ticks,
                        "durationInTicks": w.duration_ticks,
                    }
                    for w in packet.words or ()
                ],
                "participant": packet.participant_raw_id,
                "resultState": packet.result_status,
            }
    raise AssertionError(packet)


def _normalise_sdk(sdk: dict) -> dict:
    out = dict(sdk)
    participant = out.get("participant")
    if isinstance(participant, dict):  # the SDK turns raw ids into identifier objects
        out["participant"] = (
            participant.get("rawId")
            or participant.get("communicationUserId")
            or "4:" + participant["phoneNumber"]
        )
    if "resultState" in out:
        out["resultState"] = out["resultState"].lower()
    return out


ACCEPTED = [c for c in FIXTURES["inbound"] if c["sdk"] is not None]


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c["name"])
def test_we_read_what_the_sdk_reads(case):
    message = case["message"].encode() if case["binary"] else case["message"]
    ours = _sdk_view(codec.decode(message))
    sdk = _normalise_sdk(case["sdk"])
    assert {k: ours.get(k) for k in sdk} == sdk


def test_big_tick_offsets_stay_exact():
    case = next(c for c in FIXTURES["inbound"] if c["name"] == "transcription_big_offset")
    assert codec.decode(case["message"]).offset_ticks == 2516998782481234400


@pytest.mark.parametrize(
    ("name", "check"),
    [
        (
            "audio_participant_null",
            lambda p: isinstance(p, AudioData) and p.participant_raw_id is None,
        ),
        ("transcription_no_words", lambda p: p.words is None and p.result_status == "intermediate"),
        ("transcription_no_participant", lambda p: p.participant_raw_id is None and p.is_final),
        ("wrong_case_kind", lambda p: isinstance(p, AudioData) and len(p.pcm) == 640),
    ],
)
def test_we_accept_what_the_sdk_crashes_on(name, check):
    case = next(c for c in FIXTURES["inbound"] if c["name"] == name)
    assert case["sdk_error"]  # the SDK throws here...
    # ...we follow docs/protocol.md, "Inbound: unknown and malformed messages"
    assert check(codec.decode(case["message"]))


@pytest.mark.parametrize(
    ("name", "expected"), [("unknown_kind", "unknown_kind"), ("missing_payload", "missing_payload")]
)
def test_what_neither_can_read_is_a_protocol_error(name, expected):
    case = next(c for c in FIXTURES["inbound"] if c["name"] == name)
    assert case["sdk_error"]
    assert reason(case["message"]) == expected


# -- the protocol reference's edge cases --


@pytest.mark.parametrize(("rate", "size"), [(16000, 640), (24000, 960)])
def test_metadata_gives_the_frame_size(rate, size):
    m = codec.decode(
        json.dumps(
            {
                "kind": "AudioMetadata",
                "audioMetadata": {
                    "subscriptionId": "x",
                    "encoding": "pcm",
                    "sampleRate": rate,
                    "channels": 1,
                },
            }
        )
    )
    assert isinstance(m, AudioMetadata) and m.frame_bytes == size and m.length is None


def test_kind_is_case_insensitive_and_payload_keys_may_differ_in_case():
    for kind in ("AudioData", "audiodata", "AUDIODATA"):
        assert codec.decode(f'{{"kind":"{kind}","audioData":{{"data":"{B64}"}}}}').pcm == PCM
    assert codec.decode(f'{{"kind":"AudioData","AudioData":{{"data":"{B64}"}}}}').pcm == PCM


def test_missing_or_unknown_kind_falls_back_to_the_payload_key():
    assert codec.decode(f'{{"audioData":{{"data":"{B64}"}}}}').pcm == PCM
    assert codec.decode('{"kind":"Future","dtmfData":{"data":"7"}}').tone == "7"
    assert reason('{"kind":"Future","future":{}}') == "unknown_kind"
    assert reason('{"kind":42}') == "unknown_kind"


def test_audio_fields_are_optional_and_null_is_absent():
    p = codec.decode('{"kind":"AudioData","audioData":{}}')
    assert (p.pcm, p.data, p.timestamp, p.participant_raw_id, p.silent) == (
        b"",
        "",
        None,
        None,
        False,
    )
    p = codec.decode(
        '{"kind":"AudioData","audioData":{"data":null,"silent":null,"participantRawID":""}}'
    )
    assert p.pcm == b"" and p.participant_raw_id is None and p.silent is False


@pytest.mark.parametrize("tone", ["3", "*", "#", "asterisk", "pound", "A"])
def test_dtmf_tones_pass_through(tone):
    assert codec.decode(json.dumps({"kind": "DtmfData", "dtmfData": {"data": tone}})).tone == tone


def test_text_and_binary_frames_decode_alike():
    text = f'{{"kind":"AudioData","audioData":{{"data":"{B64}","silent":false}}}}'
    assert (
        codec.decode(text) == codec.decode(text.encode()) == codec.decode(bytearray(text.encode()))
    )


MALFORMED = [
    (b"\xff\xfe{}", "not_utf8"),
    ("{nope", "not_json"),
    ("", "not_json"),
    ("[1,2]", "not_object"),
    ("42", "not_object"),
    ('"AudioData"', "not_object"),
    ('{"kind":"AudioData"}', "missing_payload"),
    ('{"kind":"AudioData","audioData":[1]}', "wrong_type"),
    ('{"kind":"AudioData","audioData":{"data":12}}', "wrong_type"),
    ('{"kind":"AudioData","audioData":{"data":"AAAA","silent":"no"}}', "wrong_type"),
    ('{"kind":"AudioData","audioData":{"data":"AAAA","participantRawID":5}}', "wrong_type"),
    ('{"kind":"AudioData","audioData":{"data":"AAAA","timestamp":1}}', "wrong_type"),
    ('{"kind":"AudioData","audioData":{"data":"@@@@"}}', "bad_base64"),
    ('{"kind":"AudioData","audioData":{"data":"AAA"}}', "bad_base64"),
    ('{"kind":"AudioData","audioData":{"data":"AA=="}}', "odd_length"),
    ('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":"16000"}}', "wrong_type"),
    ('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":true}}', "wrong_type"),
    ('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16001}}', "bad_value"),
    ('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":-16000}}', "bad_value"),
    ('{"kind":"AudioMetadata","audioMetadata":{"channels":2}}', "bad_value"),
    ('{"kind":"AudioMetadata","audioMetadata":{"encoding":"opus"}}', "bad_value"),
    ('{"kind":"DtmfData","dtmfData":{"data":""}}', "bad_value"),
    ('{"kind":"DtmfData","dtmfData":{}}', "bad_value"),
    ('{"kind":"TranscriptionData","transcriptionData":{"words":"many"}}', "wrong_type"),
    ('{"kind":"TranscriptionData","transcriptionData":{"words":[3]}}', "wrong_type"),
    ('{"kind":"TranscriptionData","transcriptionData":{"confidence":"high"}}', "wrong_type"),
]


@pytest.mark.parametrize(("message", "expected"), MALFORMED)
def test_malformed_input_says_what_was_wrong(message, expected):
    assert reason(message) == expected
    assert expected in ProtocolError.REASONS


def test_decoder_orders_metadata_and_audio():
    decoder = codec.InboundDecoder()
    audio = f'{{"kind":"AudioData","audioData":{{"data":"{B64}"}}}}'
    with pytest.raises(ProtocolError) as early:
        decoder.decode(audio)
    assert early.value.reason == "audio_before_metadata"
    meta = '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000}}'
    assert decoder.decode(meta).sample_rate == 16000
    assert decoder.decode(audio).pcm == PCM
    assert decoder.decode(meta).sample_rate == 16000  # the same format again: fine
    with pytest.raises(ProtocolError) as changed:
        decoder.decode('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":24000}}')
    assert changed.value.reason == "metadata_changed"
    assert decoder.metadata is not None and decoder.metadata.sample_rate == 16000


def test_round_trip_keeps_the_audio():
    packet = codec.decode(f'{{"kind":"AudioData","audioData":{{"data":"{B64}"}}}}')
    out = orjson.loads(codec.encode_audio(packet.pcm))
    assert pybase64.b64decode(out["audioData"]["data"]) == PCM
    assert codec.encode_audio_b64(packet.data) == codec.encode_audio(packet.pcm)


# -- properties: nothing but a packet or a ProtocolError, whatever arrives --

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "kind",
    "audioData",
    "audioMetadata",
    "dtmfData",
    "transcriptionData",
    "transcriptionMetadata",
    "data",
    "silent",
    "sampleRate",
    "words",
    "participantRawID",
]


def _decodes_or_protocol_error(message: str | bytes) -> None:
    try:
        codec.decode(message)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    _decodes_or_protocol_error(data)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json(value):
    _decodes_or_protocol_error(json.dumps(value))


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from([c["message"] for c in FIXTURES["inbound"]]),
    path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=2),
    value=JSON_VALUES,
)
def test_mutated_real_packets(base, path, value):
    obj = json.loads(base)
    target = obj
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else {}
    if isinstance(target, dict):
        target[path[-1]] = value
    _decodes_or_protocol_error(json.dumps(obj))
