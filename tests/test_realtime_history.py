"""The remembered conversation (sans-IO): what the caller said and heard, bounded, written out
as conversation items for a new session."""

from __future__ import annotations

import orjson
import trio

from gateway.processors.realtime.history import CUT_MARK, History
from gateway.processors.realtime.protocol import (
    AudioDelta,
    ResponseCreated,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
)
from gateway.processors.realtime.sessions import REPLY_WAIT_S, Turns

MS_100 = "A" * 6400  # base64 of 4800 bytes: 100 ms of 24 kHz PCM16


def items(history: History, dialect: str = "ga") -> list[tuple[str, str, str]]:
    out = []
    for event in history.events(dialect):
        parsed = orjson.loads(event)
        assert parsed["type"] == "conversation.item.create"
        item = parsed["item"]
        [content] = item["content"]
        out.append((item["role"], content["type"], content["text"]))
    return out


def reply(history: History, item_id: str, ms: int, text: str) -> None:
    history.see(ResponseCreated(f"resp_{item_id}"))
    for _ in range(ms // 100):
        history.see(AudioDelta(f"resp_{item_id}", item_id, 0, MS_100))
    history.see(Transcript("bot", text, item_id))


def test_turns_in_order_with_what_was_heard_of_each_reply():
    heard = {"b1": 1000.0, "b2": 500.0, "b3": 0.0}
    history = History(lambda i: heard.get(i, 0.0), max_items=10, max_bytes=1000)
    history.see(SpeechStarted(0, "u1"))  # the caller's words come after the reply started
    reply(history, "b1", 1000, "Hello, how can I help?")
    history.see(Transcript("caller", "I need a taxi", "u1"))
    history.see(SpeechStarted(0, "u2"))
    history.see(Transcript("caller", "To the airport", "u2"))
    reply(history, "b2", 1000, "Sure, which terminal do you need?")  # heard half of it
    history.see(SpeechStarted(0, "u3"))  # the caller cut it short
    reply(history, "b3", 1000, "Never heard")  # nothing of this was heard
    assert items(history) == [
        ("user", "input_text", "I need a taxi"),
        ("assistant", "output_text", "Hello, how can I help?"),
        ("user", "input_text", "To the airport"),
        ("assistant", "output_text", "Sure, which" + CUT_MARK),
    ]
    assert items(history, "beta")[1] == ("assistant", "text", "Hello, how can I help?")


def test_heard_part_is_fixed_when_the_next_response_starts():
    """The player forgets old items; the history keeps what it knew."""
    heard = {"b1": 300.0}
    history = History(lambda i: heard.get(i, 0.0), max_items=10, max_bytes=1000)
    reply(history, "b1", 1000, "one two three four five six seven eight nine ten")
    history.see(ResponseCreated("resp_next"))
    heard.clear()
    [(_, _, text)] = items(history)
    assert text == "one two three" + CUT_MARK


def test_a_16khz_models_audio_is_counted_in_its_own_milliseconds():
    """With Voice Live at 16 kHz, 4800 bytes are 150 ms, not 100: 700 ms heard of a reply of
    1500 ms is under half of it (at 24 kHz's rate it would read as more than all of it)."""
    heard = {"b1": 700.0}
    history = History(lambda i: heard.get(i, 0.0), max_items=10, max_bytes=1000, model_rate=16000)
    reply(history, "b1", 1000, "one two three four five six seven eight nine ten")
    [(_, _, text)] = items(history)
    assert text == "one two three four" + CUT_MARK


def test_bounded_by_count_and_bytes_oldest_first():
    forgotten: list[None] = []
    history = History(
        lambda i: 0.0, max_items=3, max_bytes=1000, on_drop=lambda: forgotten.append(None)
    )
    for n in range(5):
        history.see(Transcript("caller", f"turn {n}", f"u{n}"))
    assert items(history) == [
        ("system", "input_text", "(The first 2 turns of this call are left out.)"),
        ("user", "input_text", "turn 2"),
        ("user", "input_text", "turn 3"),
        ("user", "input_text", "turn 4"),
    ]
    assert history.dropped == len(forgotten) == 2
    history = History(lambda i: 0.0, max_items=100, max_bytes=25)
    for n in range(5):
        history.see(Transcript("caller", f"ten bytes{n}", f"u{n}"))
    assert [t for _, _, t in items(history)][1:] == ["ten bytes3", "ten bytes4"]
    assert history.dropped == 3 and history.bytes == 20


async def test_turns_between_and_during(autojump_clock):
    turns = Turns()
    assert turns.quiet(trio.current_time())
    turns.see(SpeechStarted(0, "u1"))
    assert not turns.quiet(trio.current_time())
    turns.see(SpeechStopped(0))
    await trio.sleep(1.0)
    assert not turns.quiet(trio.current_time())  # a reply is about to start
    turns.see(ResponseCreated("r"))
    assert turns.quiet(trio.current_time())  # the bridge checks the bot's own audio separately
    turns.see(ToolCall("lookup", "call_1", "{}"))
    assert not turns.quiet(trio.current_time())  # its result goes to this session
    turns.see(ResponseCreated("r2"))  # the tool's output is in; the model answers
    turns.see(SpeechStopped(0))
    await trio.sleep(REPLY_WAIT_S)
    assert turns.quiet(trio.current_time())  # no reply came: the turn is over anyway


def test_what_the_model_was_told_in_words_is_remembered():
    history = History(lambda i: 0.0, max_items=10, max_bytes=200)
    history.see(SpeechStarted(0, "u1"))
    history.see(Transcript("caller", "Where is my order?", "u1"))
    history.told("system", "The tool order_status was called and returned: shipped")
    history.told("user", "The caller pressed 1 and #.")
    assert items(history)[1:] == [
        ("system", "input_text", "The tool order_status was called and returned: shipped"),
        ("user", "input_text", "The caller pressed 1 and #."),
    ]
    history.told("system", "x" * 150)  # within the bytes bound only without the oldest turns
    assert history.dropped == 2 and items(history, "beta")[0][0] == "system"
