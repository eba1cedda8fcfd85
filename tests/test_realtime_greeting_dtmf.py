"""The realtime processor speaks first (`greeting`) and tells the model of key presses
(`dtmf_to_model`): end to end with the simulated ACS call and the fake model, on Trio's
autojump clock."""

from __future__ import annotations

import json

import pytest
import trio

from gateway.errors import ConfigError
from gateway.processors import Call, load
from gateway.processors.realtime.dtmf import sentence
from gateway.records.disk import DISK
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech
from tests.test_realtime_e2e import KEY_ENV, options, silence, spied

HELLO = speech(24000)[: 24000 * 2]  # the bot's 1 s greeting


def user_texts(model) -> list[str]:  # type: ignore[no-untyped-def]
    items = [e["item"] for e in model.received("conversation.item.create")]
    return [i["content"][0]["text"] for i in items if i.get("role") == "user"]


async def test_the_bot_greets_before_the_caller_speaks(autojump_clock, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "k")
    greeting = "Greet the caller warmly and ask how you can help."
    async with open_fake_model([HELLO]) as model:
        opts = options(model.url, greeting=greeting)
        async with open_gateway(
            load("realtime", opts), call_events=True, recording_dir=str(tmp_path)
        ) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.wait_for_audio(16000 * 2 * 9 // 10)  # nearly all of it, unasked
                await acs.stream(silence(16000, 0.2))
                await model.drop()  # a new session is not greeted again
                await model.wait_for(lambda m: len(m.received("session.update")) == 2)
                await acs.stream(silence(16000, 0.5))
    [create] = model.received("response.create")
    assert create == {"type": "response.create", "response": {"instructions": greeting}}
    assert model.sent_of("input_audio_buffer.speech_started") == []  # the caller never spoke
    # sent as soon as the session was ready, not later
    [updated] = model.sent_of("session.updated")[:1]
    [asked] = [r for r in model.events if r.type == "response.create"]
    assert asked.time - updated.time <= 0.001
    # the call's record measures the time to the greeting's first audio
    await trio.to_thread.run_sync(DISK.wait_idle, 10.0)
    [path] = tmp_path.glob("*.jsonl")
    log = [json.loads(line) for line in path.read_text().splitlines()]
    [first] = [e for e in log if e["event"] == "latency" and e["kind"] == "first_audio"]
    assert 0 <= first["ms"] <= 100  # the fake model answers at once
    assert [e["event"] for e in log].count("greeting") == 1


async def test_a_fixed_greeting_is_said_as_written(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model([HELLO]) as model:
        opts = options(model.url, greeting={"text": "Thanks for calling Contoso."}, protocol="beta")
        async with open_gateway(load("realtime", opts)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.wait_for_audio(3200)
    [create] = model.received("response.create")
    assert '"Thanks for calling Contoso."' in create["response"]["instructions"]


def test_greeting_options_are_checked(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    for bad in ["  ", {"words": "hi"}, {"text": ""}, {"text": "a", "instructions": "b"}]:
        with pytest.raises(ConfigError, match="greeting"):
            load("realtime", options("ws://127.0.0.1:1", greeting=bad))


def test_what_the_model_is_told_of_keys():
    assert sentence(["5"]) == "The caller pressed 5."
    assert sentence(["1", "2", "#"]) == "The caller pressed 1, 2 and #."


async def test_keys_pressed_go_to_the_model_as_words(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    answer = speech(24000)[: 24000 * 2]
    async with open_fake_model([answer]) as model:
        opts = options(model.url, dtmf_to_model=True, dtmf_wait_ms=500)
        async with open_gateway(load("realtime", opts)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await model.wait_for(lambda m: m.received("session.update"))
                for tone in ("1", "2", "pound"):  # a number, typed
                    await acs.send_dtmf(tone)
                    await trio.sleep(0.3)
                await acs.wait_for_audio(16000)  # the model answers the keys
                pressed_at = trio.current_time()
                await acs.send_dtmf("*")
                await model.wait_for(lambda m: len(user_texts(m)) == 2)
                told_at = trio.current_time()
    assert user_texts(model) == ["The caller pressed 1, 2 and #.", "The caller pressed *."]
    assert [r.type for r in model.events if r.type != "input_audio_buffer.append"][-2:] == [
        "conversation.item.create",
        "response.create",
    ]
    assert len(model.received("response.create")) == 2
    assert 0.5 <= told_at - pressed_at <= 0.52  # one key: told after the quiet wait
    assert model.sent_of("input_audio_buffer.speech_started") == []


async def test_a_key_pressed_while_the_bot_speaks_stops_it(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    long_reply = speech(24000)  # 7.6 s
    calls: list[Call] = []
    async with open_fake_model([long_reply, HELLO]) as model:
        opts = options(model.url, dtmf_to_model=True, dtmf_wait_ms=0, greeting="Read the menu.")
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.wait_for_audio(16000 * 2)  # a second of the menu
                pressed_at = trio.current_time()
                await acs.send_dtmf("2")
                await acs.wait_for(lambda c: c.stop_times)
                await model.wait_for(lambda m: len(m.received("response.create")) == 2)
    [stop_at] = acs.stop_times
    assert stop_at - pressed_at <= 0.02
    assert model.received("response.cancel")  # the menu's response, cancelled
    assert user_texts(model) == ["The caller pressed 2."]
    assert calls[0].stats.barge_ins == 1
    assert model.sent_of("error") == []  # the new response was asked after the cancel


async def test_keys_are_not_told_unless_asked(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model() as model:
        async with open_gateway(load("realtime", options(model.url))) as server:
            async with simulated_call(server.urls[0]) as acs:
                await model.wait_for(lambda m: m.received("session.update"))
                await acs.send_dtmf("5")
                await acs.stream(silence(16000, 2.0))
    assert model.received("conversation.item.create") == []
    assert model.received("response.create") == []
