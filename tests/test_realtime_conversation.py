"""What a barge-in tells the model: cancel the response, truncate each item to what the caller
heard, or delete it if they heard none of it."""

from __future__ import annotations

import orjson

from gateway.processors.realtime.conversation import Conversation
from gateway.processors.realtime.protocol import AudioDelta


def _delta(response: str, item: str, n_bytes: int) -> tuple[AudioDelta, int]:
    return AudioDelta(response, item, 0, ""), n_bytes


def test_barge_in_cancels_and_truncates_to_what_was_released():
    released = {"i1": 1230.0}
    conv = Conversation(lambda item: released.get(item, 0.0))
    conv.response_created("r1")
    assert conv.audio(*_delta("r1", "i1", 48000 * 3))  # 3 s of model audio
    events = [orjson.loads(e) for e in conv.interrupt()]
    assert events == [
        {"type": "response.cancel", "response_id": "r1"},
        {
            "type": "conversation.item.truncate",
            "item_id": "i1",
            "content_index": 0,
            "audio_end_ms": 1230,
        },
    ]
    assert not conv.audio(*_delta("r1", "i1", 4800))  # late audio of the cancelled reply
    assert conv.interrupt() == []  # a second speech start: nothing more to say


def test_barge_in_deletes_an_item_nobody_heard():
    conv = Conversation(lambda item: 0.0)
    conv.response_created("r1")
    conv.audio(*_delta("r1", "i1", 4800))
    kinds = [orjson.loads(e)["type"] for e in conv.interrupt()]
    assert kinds == ["response.cancel", "conversation.item.delete"]


def test_barge_in_after_a_fully_heard_reply_says_nothing():
    conv = Conversation(lambda item: 1000.0)
    conv.response_created("r1")
    conv.audio(*_delta("r1", "i1", 48000))  # 1 s
    conv.audio_done("i1")
    conv.response_done("r1")
    assert conv.interrupt() == []


def test_barge_in_while_the_reply_is_still_playing_after_the_model_finished():
    conv = Conversation(lambda item: 400.0)
    conv.response_created("r1")
    conv.audio(*_delta("r1", "i1", 48000))
    conv.audio_done("i1")
    conv.response_done("r1")  # model done; player still has 600 ms queued
    [truncate] = [orjson.loads(e) for e in conv.interrupt()]
    assert truncate["type"] == "conversation.item.truncate"
    assert truncate["audio_end_ms"] == 400
