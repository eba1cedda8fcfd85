"""Recorded sessions: the file format, and replay over memory streams on the autojump clock
(exact times, so a replay of a deterministic processor answers exactly as recorded)."""

from __future__ import annotations

import pytest
import trio

from gateway.simulate.recording import Entry, Recording, compare, replay_into
from gateway.testing import speech
from gateway.testing.processors import barge_in_bot
from tests.conftest import memory_call


def test_the_file_keeps_both_directions_and_timings(tmp_path):
    rec = Recording(24000, "conn-1", [("x-ms-call-connection-id", "conn-1")])
    rec.entries = [
        Entry(0.0, "sent", '{"kind":"AudioMetadata"}'),
        Entry(0.02, "sent", b"\x00\xffbinary"),
        Entry(0.0213, "received", '{"kind":"stopAudio","stopAudio":{}}'),
        Entry(1.5, "closed", code=1011),
    ]
    rec.write(tmp_path / "r.jsonl")
    back = Recording.read(tmp_path / "r.jsonl")
    assert back == rec
    assert back.duration == 1.5
    assert back.summary() == {
        "audio_ms": 0.0,
        "first_audio_s": None,
        "stop_audio_s": [0.0213],
        "close_code": 1011,
    }


def test_a_bad_file_is_named_with_its_line(tmp_path):
    (tmp_path / "a.jsonl").write_text("hello\n")
    with pytest.raises(ValueError, match="a.jsonl: not a recording"):
        Recording.read(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"recording": 1, "sample_rate": 16000}\n{"t": 1}\n')
    with pytest.raises(ValueError, match="b.jsonl, line 2"):
        Recording.read(tmp_path / "b.jsonl")


async def _record_barge_in() -> Recording:
    async with memory_call(barge_in_bot({}), headers=[("Authorization", "Bearer secret")]) as mc:
        call = mc.peer
        await call.wait_for_audio(16000)  # the bot talks for half a second
        await call.stream(speech(16000, "interrupt")[:16000])  # the caller talks over it
        await trio.sleep(0.5)
        await call.hang_up()
    return Recording.from_call(call)


async def test_a_replay_answers_exactly_as_recorded(autojump_clock):
    recorded = await _record_barge_in()
    assert "authorization" not in [h[0].lower() for h in recorded.headers]  # no secrets saved
    summary = recorded.summary()
    assert len(summary["stop_audio_s"]) >= 1 and summary["audio_ms"] > 400

    async with memory_call(barge_in_bot({}), send_metadata=False) as mc:
        await replay_into(mc.peer, recorded, tail=0.5)
    again = Recording.from_call(mc.peer)
    assert [e.msg for e in again.sent()] == [e.msg for e in recorded.sent()]
    assert [e.t for e in again.sent()] == pytest.approx([e.t for e in recorded.sent()], abs=1e-6)
    assert compare(recorded, again, tolerance=0.001) == []


async def test_a_different_answer_is_reported(autojump_clock):
    recorded = await _record_barge_in()
    async with memory_call("echo", send_metadata=False) as mc:  # echo never stops
        await replay_into(mc.peer, recorded, tail=0.5)
    differences = compare(recorded, Recording.from_call(mc.peer))
    assert any(d.startswith("stop-audio: 0 events") for d in differences)
    assert any(d.startswith("first audio at") for d in differences)  # echo waits for speech
