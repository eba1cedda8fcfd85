"""End to end: a simulated ACS call, the gateway running the realtime processor, and the fake
model server, all on 127.0.0.1 under Trio's autojump clock (virtual time, so the timing
assertions below are exact, not luck)."""

from __future__ import annotations

import trio

from gateway.processors import Call, load
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech

from .conftest import open_fds, task_count

KEY_ENV = "TEST_REALTIME_KEY"
FRAME_S = 0.020


def options(model_url: str, **extra: object) -> dict[str, object]:
    return {"endpoint": model_url, "api_key_env": KEY_ENV, "keepalive_interval": 5.0, **extra}


def spied(opts: dict[str, object], calls: list[Call]):  # type: ignore[no-untyped-def]
    """The realtime processor, remembering each Call so tests can read its player."""
    inner = load("realtime", opts)

    async def processor(call: Call) -> None:
        calls.append(call)
        await inner(call)

    return processor


def silence(rate: int, seconds: float) -> bytes:
    return bytes(int(rate * seconds) * 2)


def conversation(rate: int) -> bytes:
    """The caller: says something (2 s), waits while the model answers (1.5 s), interrupts
    (1 s of other speech), then is quiet."""
    if rate == 16000:
        interrupt = speech(16000, "interrupt")[: 16000 * 2]
    else:
        interrupt = speech(24000)[24000 * 2 * 5 : 24000 * 2 * 6]
    return (
        speech(rate)[: rate * 2 * 2] + silence(rate, 1.5) + interrupt + silence(rate, 1.0)
    )


async def test_barge_in_truncates_to_what_was_released(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "secret-key")
    reply = speech(24000)  # 7.6 s: still playing when the caller interrupts
    calls: list[Call] = []
    async with open_fake_model([reply], api_key="secret-key") as model:
        async with open_gateway(spied(options(model.url), calls)) as server:
            tasks, fds = task_count(), open_fds()
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(conversation(16000))
                hung_up_at = trio.current_time()
            with trio.fail_after(5):
                await model.wait_for(lambda m: m.live == 0)
            closed_at = trio.current_time()
            with trio.fail_after(5):
                while server.live:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert task_count() == tasks
            assert open_fds() == fds

    [call] = calls
    assert call.player is not None
    starts = model.sent_of("input_audio_buffer.speech_started")
    assert len(starts) == 2  # the question, then the interruption
    [stop_at] = acs.stop_times
    # stop-audio reached ACS within one frame of the model's speech start
    assert 0 <= stop_at - starts[1].time <= FRAME_S
    # nothing of the bot's was sent after the stop
    assert [r for r in acs.received if r.kind == "audioData" and r.time > stop_at] == []
    # the caller heard part of the reply, not all of it
    [created] = model.sent_of("response.created")
    [item_added] = model.sent_of("response.output_item.added")
    item_id = item_added.event["item"]["id"]
    released_ms = call.player.released_ms(item_id)
    assert 500 < released_ms < len(reply) / 48
    # response.cancel for the reply in flight, then a truncate to what the player released
    [cancel] = model.received("response.cancel")
    assert cancel["response_id"] == created.event["response"]["id"]
    [truncate] = model.received("conversation.item.truncate")
    assert truncate["item_id"] == item_id
    assert abs(truncate["audio_end_ms"] - released_ms) <= FRAME_S * 1000
    sent_before_stop_ms = len(acs.received_pcm) / 32  # 16 kHz PCM16: 32 bytes per ms
    assert abs(truncate["audio_end_ms"] - sent_before_stop_ms) <= FRAME_S * 1000
    [done] = model.sent_of("response.done")
    assert done.event["response"]["status"] == "cancelled"
    assert [r.type for r in model.sent if r.type == "error"] == []
    # the upstream was closed when ACS hung up, not later
    assert closed_at - hung_up_at <= 0.1
    assert call.stats.barge_ins == 1 and call.stats.upstream_errors == 0
    assert call.stats.upstream_audio_dropped == 0  # the first words waited for the session
    assert call.player.playout.stats.dropped_by_stop > 0  # the rest of the reply, counted
