"""Session rollover with memory, end to end: a simulated ACS call, the gateway's realtime bridge
and the fake model, whose sessions expire, on Trio's autojump clock (virtual minutes)."""

from __future__ import annotations

import itertools
from typing import Any

from gateway.processors import Call
from gateway.processors.realtime.history import CUT_MARK
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech
from tests.test_realtime_e2e import KEY_ENV, idle, options, spied

RATE = 24000  # the model's rate: the call's audio goes upstream untouched (cheaper to run)
WORDS = "one two three four five six seven eight nine ten eleven twelve"


def talk(seconds: float) -> bytes:
    voice = speech(RATE) * 2
    return voice[: int(RATE * seconds) * 2]


def quiet(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def conversation_items(model: Any, connection: int) -> list[tuple[str, str]]:
    return [(i["role"], i["content"][0]["text"]) for i in model.items.get(connection, [])]


def appends(model: Any, connection: int) -> list[float]:
    return [
        r.time
        for r in model.events
        if r.type == "input_audio_buffer.append" and r.connection == connection
    ]


def script(slots: int, slot_s: float, interrupted: int) -> tuple[bytes, list[bytes], list[str]]:
    """After 2 s, the caller speaks every `slot_s`; the bot answers in 2 s, except answer
    number `interrupted` (10 s), which the caller interrupts after about 2 s."""
    caller = bytearray(quiet(2.0))
    for slot in range(slots):
        if slot == interrupted:
            caller += talk(1.5) + quiet(2.0) + talk(1.0) + quiet(slot_s - 4.5)
        else:
            caller += talk(1.5) + quiet(slot_s - 1.5)
    replies = [talk(10.0) if n == interrupted else talk(2.0) for n in range(slots + 2)]
    texts = [WORDS if n == interrupted else f"reply {n + 1}" for n in range(slots + 2)]
    return bytes(caller), replies, texts


def expected_conversation(
    texts: list[str], interrupted: int, heard_fraction: float
) -> list[tuple[str, str]]:
    words = WORDS[: int(len(WORDS) * heard_fraction)]
    cut = words[: words.rfind(" ")] if not WORDS[len(words)].isspace() else words
    out: list[tuple[str, str]] = []
    for n in range(len(texts)):
        out.append(("user", f"caller turn {n + 1}"))
        out.append(("assistant", cut + CUT_MARK if n == interrupted else texts[n]))
    return out


async def run_call(
    monkeypatch: Any, slots: int, slot_s: float, expire_s: float, **gateway_options: Any
) -> tuple[Any, Call, list[str]]:
    monkeypatch.setenv(KEY_ENV, "k")
    caller, replies, texts = script(slots, slot_s, INTERRUPTED)
    calls: list[Call] = []
    async with open_fake_model(
        replies, texts=texts, shared_script=True, session_max_s=expire_s
    ) as model:
        opts = options(model.url, transcription={"model": "whisper-1"}, **gateway_options)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                await acs.stream(caller)
            await idle(server)
    [call] = calls
    return model, call, texts


INTERRUPTED = 1  # the second answer is cut short


def check_memory(model: Any, call: Call, texts: list[str], turns: int) -> None:
    """Each new session received the conversation so far: the caller's words, and of the
    bot's only what the caller heard."""
    added = [r.event["item"]["id"] for r in model.sent_of("response.output_item.added")]
    assert call.player is not None
    heard_fraction = call.player.released_ms(added[INTERRUPTED]) / 10000
    assert 0.1 < heard_fraction < 0.5
    expected = expected_conversation(texts, INTERRUPTED, heard_fraction)
    earlier = 0
    for connection in range(2, model.connections + 1):
        items = conversation_items(model, connection)
        assert items == expected[: len(items)], connection
        assert len(items) > earlier  # the call went on: each session knows more
        earlier = len(items)
    assert earlier >= 2 * turns  # the last session knew at least this many turns


async def test_planned_rollovers_keep_the_conversation(autojump_clock, monkeypatch):
    """A 5-minute call; sessions expire after 60 s. The bridge opens the next one 20 s before
    that and switches between turns, so no session expires and no caller audio is lost."""
    model, call, texts = await run_call(
        monkeypatch, 15, 20.0, 60.0, session_max_s=60, rollover_before_s=20
    )
    assert model.connections >= 7
    assert call.stats.session_rollovers == model.connections - 1
    assert sum(call.stats.upstream_errors.values()) == 0  # none expired, none failed
    assert call.stats.upstream_audio_dropped == 0 and call.stats.upstream_reconnects == 0
    assert [r.event for r in model.sent_of("error")] == []  # every item was accepted
    check_memory(model, call, texts, turns=12)
    done = [r.time for r in model.sent_of("response.done")]
    created = [r.time for r in model.sent_of("response.created")]
    for connection in range(2, model.connections + 1):  # each switch came between turns
        switched_at = appends(model, connection)[0]
        assert not any(a < switched_at < b + 2.0 for a, b in zip(created, done, strict=True))


async def test_expiring_sessions_are_replaced_with_the_conversation(autojump_clock, monkeypatch):
    """No planned rollover: each session expires (error event, then the close) and the
    reconnect re-creates the conversation in the fresh one."""
    model, call, texts = await run_call(monkeypatch, 11, 10.0, 30.0, session_max_s=0)
    assert model.connections == 4  # expired at about 30, 60 and 90 s
    expired = [r.event["error"]["code"] for r in model.sent_of("error")]
    assert expired == ["session_expired"] * 3
    assert call.stats.upstream_reconnects == 3 and call.stats.session_rollovers == 0
    check_memory(model, call, texts, turns=9)


async def test_rollover_waits_for_the_reply_and_leaves_no_gap(autojump_clock, monkeypatch):
    """The switch is due at 20 s, during a 12 s reply: it waits until the caller has heard all
    of it, then moves over; the caller's next turn is answered as fast as the first."""
    monkeypatch.setenv(KEY_ENV, "k")
    gap_ms = 200
    # ends at 39.5 s, before the third session is due (at 40 s: the second opened at 20)
    caller = quiet(15.0) + talk(1.5) + quiet(18.5) + talk(1.5) + quiet(3.0)
    calls: list[Call] = []
    async with open_fake_model([talk(12.0), talk(2.0)], shared_script=True) as model:
        opts = options(model.url, session_max_s=40, rollover_before_s=20, rollover_gap_ms=gap_ms)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                await acs.stream(caller)
            await idle(server)
    [call] = calls
    assert model.connections == 2 and call.stats.session_rollovers == 1
    [first, second] = model.sent_of("response.created")
    assert (first.connection, second.connection) == (1, 2)
    # the first reply was heard whole and without a pause; the switch came after it
    audio = [r for r in acs.received if r.kind == "audioData"]
    reply_1 = [r.time for r in audio if r.time < 33.0]
    assert len(b"".join(r.pcm for r in audio if r.time < 33.0)) == len(talk(12.0))
    assert max(b - a for a, b in itertools.pairwise(reply_1)) <= gap_ms / 1000
    switched_at = appends(model, 2)[0]
    assert reply_1[-1] < switched_at
    assert appends(model, 1)[-1] < switched_at  # one step: no frame went to both, none lost
    assert call.stats.upstream_audio_dropped == 0
    # the next turn, in the new session, is answered as fast as the first one was
    stops = model.sent_of("input_audio_buffer.speech_stopped")
    latency = [min(r.time for r in audio if r.time > stop.time) - stop.time for stop in stops[:2]]
    assert abs(latency[1] - latency[0]) <= gap_ms / 1000


async def test_a_failing_next_session_falls_back_to_the_reconnect_policy(
    autojump_clock, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    caller = talk(1.5) + quiet(8.5)
    async with open_fake_model([talk(2.0)], session_max_s=30) as model:
        opts = options(
            model.url,
            transcription={"model": "whisper-1"},
            session_max_s=30,
            rollover_before_s=10,
            backoff_initial_ms=500,
        )
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                await acs.stream(caller)
                model.refuse(503)  # the next session, due at 20 s, is refused
                await acs.stream(quiet(20.2))  # the first one expires at 30 s
                model.refuse(None)
                await acs.stream(quiet(2.0))
            await idle(server)
    [call] = calls
    assert call.stats.upstream_errors["standby_failed"] == 1
    assert call.stats.upstream_errors["session_failed"] == 1  # the expiry
    assert call.stats.upstream_reconnects >= 1 and call.stats.session_rollovers == 0
    last = model.connections
    assert conversation_items(model, last) == [("user", "caller turn 1"), ("assistant", "reply 1")]


async def test_the_ready_next_session_takes_over_at_once_when_the_current_one_fails(
    autojump_clock, monkeypatch
):
    """The next session is ready at 20 s, but the bot is still speaking; the current session
    expires at 25 s (earlier than configured): the ready one takes over with no back-off, and
    the reply already received plays on to its end."""
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    caller = quiet(15.0) + talk(1.5) + quiet(18.5)
    async with open_fake_model([talk(12.0)], texts=[WORDS], session_max_s=25) as model:
        opts = options(
            model.url,
            transcription={"model": "whisper-1"},
            session_max_s=30,
            rollover_before_s=10,
            backoff_initial_ms=2000,
        )
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                await acs.stream(caller)
            await idle(server)
    [call] = calls
    assert model.connections == 2
    assert call.stats.session_rollovers == 1 and call.stats.upstream_reconnects == 0
    assert call.stats.upstream_errors["session_failed"] == 1
    [expired] = model.sent_of("error")
    switched_at = appends(model, 2)[0]
    assert switched_at - expired.time < 0.1  # no back-off: the caller's audio moved at once
    assert call.stats.upstream_audio_dropped <= 5  # frames, while the failure was noticed
    audio = b"".join(r.pcm for r in acs.received if r.kind == "audioData")
    assert len(audio) == len(talk(12.0))  # the reply was heard to its end
    [user, bot] = conversation_items(model, 2)
    assert user == ("user", "caller turn 1")
    assert bot == ("assistant", "one two three four five six seven eight" + CUT_MARK)  # by 25 s


async def test_a_session_that_waited_on_standby_is_aged_from_when_it_opened(
    autojump_clock, monkeypatch
):
    """The service counts a session's life from when it opened, not from when the bridge
    began to use it. Here a switch can rarely wait for a turn's end (the echo model answers
    the caller all the time), so a next session, opened 8 s before the limit, often takes
    over only when the current one expires, already 8 s old: its own next must be opened 8 s
    before *its* limit too, not as it expires (then, with a real service's set-up time, it
    would not be ready, and the call would fall back to a reconnect: a back-off with the
    caller's audio dropped)."""
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model(echo=True, session_max_s=20) as model:
        opts = options(model.url, session_max_s=20, rollover_before_s=8, backoff_initial_ms=2000)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                await acs.stream((speech(RATE) * 20)[: RATE * 2 * 70])  # 70 s
            await idle(server)
    [call] = calls
    opened = [
        min(r.time for r in model.events if r.connection == c)
        for c in range(1, model.connections + 1)
    ]
    assert len(opened) >= 5  # one every 12 s
    for before, after in itertools.pairwise(opened):
        assert after <= before + 20 - 7  # opened about 8 s before the one before expired
    assert call.stats.session_rollovers == model.connections - 1
    assert call.stats.upstream_reconnects == 0
