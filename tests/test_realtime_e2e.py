"""End to end: a simulated ACS call, the gateway running the realtime processor, and the fake
model server, all on 127.0.0.1 under Trio's autojump clock (virtual time, so the timing
assertions below are exact, not luck)."""

from __future__ import annotations

import functools
import gc
import socket
import ssl

import pybase64
import pytest
import trio

from gateway.processors import Call, load
from gateway.processors.realtime import downlink, upstream
from gateway.testing import (
    FakeModel,
    SimulatedCall,
    open_fake_model,
    open_gateway,
    simulated_call,
    speech,
)
from tests.conftest import open_fds, task_count
from tests.daemons import throwaway_tls

KEY_ENV = "TEST_REALTIME_KEY"
FRAME_S = 0.020


def options(model_url: str, **extra: object) -> dict[str, object]:
    return {"endpoint": model_url, "api_key_env": KEY_ENV, "keepalive_interval": 5.0, **extra}


class spied:
    """The realtime processor, remembering each Call so tests can read its player. Its inline
    audio handler is passed on (`inline=False`: not, so the audio comes through `packets`)."""

    def __init__(self, opts: dict[str, object], calls: list[Call], *, inline: bool = True):
        self.inner = load("realtime", opts)
        self.calls = calls
        if inline:
            self.audio_handler = self.inner.audio_handler  # type: ignore[attr-defined]

    async def __call__(self, call: Call) -> None:
        self.calls.append(call)
        await self.inner(call)


async def idle(server) -> None:  # type: ignore[no-untyped-def]
    """Wait until the gateway has no live call (its call tasks have all ended)."""
    for _ in range(500):
        if not server.live:
            return
        await trio.sleep(0.01)
    raise AssertionError("the call did not end")


def silence(rate: int, seconds: float) -> bytes:
    return bytes(int(rate * seconds) * 2)


def conversation(rate: int) -> bytes:
    """The caller: says something (2 s), waits while the model answers (1.5 s), interrupts
    (1 s of other speech), then is quiet."""
    if rate == 16000:
        interrupt = speech(16000, "interrupt")[: 16000 * 2]
    else:
        interrupt = speech(24000)[24000 * 2 * 5 : 24000 * 2 * 6]
    return speech(rate)[: rate * 2 * 2] + silence(rate, 1.5) + interrupt + silence(rate, 1.0)


async def call_and_hang_up(
    model: FakeModel, processor: spied, rate: int
) -> tuple[SimulatedCall, float]:
    """One `conversation` through a gateway running `processor`. After ACS hangs up, the
    model's connection must close and the call must leave no task or socket behind. Returns
    the simulated ACS, and how long after the hang-up the model's connection closed."""
    async with open_gateway(processor) as server:
        tasks, fds = task_count(), open_fds()
        async with simulated_call(server.urls[0], sample_rate=rate) as acs:
            await acs.stream(conversation(rate))
            hung_up_at = trio.current_time()
        with trio.fail_after(5):
            await model.wait_for(lambda m: m.live == 0)
        closed_after = trio.current_time() - hung_up_at
        await idle(server)
        await trio.sleep(0.1)
        assert task_count() == tasks
        assert open_fds() <= fds  # a socket an earlier test left to the GC may close now
    return acs, closed_after


async def test_barge_in_truncates_to_what_was_released(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "secret-key")
    reply = speech(24000)  # 7.6 s: still playing when the caller interrupts
    calls: list[Call] = []
    async with open_fake_model([reply], api_key="secret-key") as model:
        acs, closed_after = await call_and_hang_up(model, spied(options(model.url), calls), 16000)

    [call] = calls
    assert call.player is not None
    starts = model.sent_of("input_audio_buffer.speech_started")
    assert len(starts) == 2  # the question, then the interruption
    [stop_at] = acs.stop_times
    # stop-audio reached ACS within one frame of the model's speech start
    assert 0 <= stop_at - starts[1].time <= FRAME_S
    # what ACS still had queued at the stop (dropped by it) is within the lead window (60 ms)
    assert 0 < acs.playback.dropped_bytes <= 60 * 32
    # nothing of the bot's was sent after the stop
    assert acs.audio_after_stop == []
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
    assert closed_after <= 0.1
    assert call.stats.barge_ins == 1 and upstream_errors(call) == 0
    assert call.stats.upstream_audio_dropped == 0  # the first words waited for the session
    assert call.player.playout.stats.dropped_by_stop > 0  # the rest of the reply, counted


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks whose name ends with `suffix`."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_a_model_served_over_tls(autojump_clock, monkeypatch, tmp_path):
    """The model over wss://, as the real service is: the bridge verifies its certificate,
    the caller's audio reaches the model byte for byte (24 kHz, passed through), the reply
    plays, a barge-in stops it, and the TLS connection closes when ACS hangs up. The appends
    are written from the call's receive task: the task that sends to the model hardly runs."""
    sender = TaskSteps("Bridge._send_caller")
    trio.lowlevel.add_instrument(sender)
    monkeypatch.setenv(KEY_ENV, "secret-key")
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, keyfile)
    monkeypatch.setattr(upstream, "_tls_context", lambda: client_context)  # trusts the test CA
    calls: list[Call] = []
    reply = speech(24000)
    async with open_fake_model([reply], api_key="secret-key", ssl_context=server_context) as model:
        assert model.url.startswith("wss://127.0.0.1:")
        acs, closed_after = await call_and_hang_up(model, spied(options(model.url), calls), 24000)
    trio.lowlevel.remove_instrument(sender)
    appended = [e["audio"] for e in model.received("input_audio_buffer.append")]
    assert b"".join(pybase64.b64decode(a) for a in appended) == bytes(acs.sent[None])
    assert len(appended) > 100 and sender.steps < len(appended) // 10
    assert len(model.sent_of("input_audio_buffer.speech_started")) == 2
    assert len(acs.received_pcm) > 24000 * 2 // 2  # over half a second of the reply played
    assert len(acs.stop_times) == 1  # the barge-in
    [call] = calls
    assert call.stats.barge_ins == 1 and upstream_errors(call) == 0
    assert closed_after <= 0.1


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "via packets"])
async def test_24khz_passes_base64_through_and_beta_names_work(autojump_clock, monkeypatch, inline):
    """Azure OpenAI preview URL form: beta event names (response.audio.delta), api-key header;
    a 24 kHz call's audio goes upstream as ACS sent it, byte for byte, silence included,
    whether the bridge hears it inline or (wrapped by a processor that does not pass its
    handler on) through `packets`."""
    monkeypatch.setenv(KEY_ENV, "azure-key")
    calls: list[Call] = []
    async with open_fake_model([speech(24000)], api_key="azure-key") as model:
        opts = options(model.url, provider="azure-preview", model="my-deployment")
        processor = spied(opts, calls, inline=inline)
        async with open_gateway(processor) as server:
            async with simulated_call(server.urls[0], sample_rate=24000) as acs:
                await acs.stream(conversation(24000))
            await idle(server)
    [(resource, headers)] = model.requests
    assert resource == "/openai/realtime?api-version=2025-04-01-preview&deployment=my-deployment"
    assert headers["api-key"] == "azure-key"
    [update] = model.received("session.update")
    assert update["session"]["input_audio_format"] == "pcm16"  # the beta shape
    assert model.sent_of("response.done") and len(acs.received_pcm) > 24000  # beta audio played
    appended = [e["audio"] for e in model.received("input_audio_buffer.append")]
    assert b"".join(pybase64.b64decode(a) for a in appended) == bytes(acs.sent[None])
    [truncate] = model.received("conversation.item.truncate")
    [call] = calls
    assert call.player is not None
    assert abs(truncate["audio_end_ms"] - call.player.released_ms(truncate["item_id"])) <= 20
    assert len(acs.stop_times) == 1
    del call, calls[:]
    gc.collect()
    assert not processor.inner._bridges  # the call's bridge went with the call


async def test_16khz_with_voice_live_is_not_resampled_either_way(autojump_clock, monkeypatch):
    """Voice Live takes and gives 16 kHz PCM16: the session asks for it, the caller's audio
    goes upstream as ACS sent it (base64 and all), and the model's reply reaches the caller
    byte for byte, cut where the caller barged in; the truncation is in the model's own ms."""
    monkeypatch.setenv(KEY_ENV, "vl-key")
    reply = speech(16000)  # still playing when the caller interrupts
    calls: list[Call] = []
    async with open_fake_model([reply], api_key="vl-key") as model:
        opts = options(model.url, provider="voice-live")
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(conversation(16000))
            await idle(server)
    [(resource, headers)] = model.requests
    assert resource.startswith("/voice-live/realtime?api-version=")
    assert headers["api-key"] == "vl-key"
    [update] = model.received("session.update")
    assert update["session"]["input_audio_sampling_rate"] == 16000
    assert update["session"]["output_audio_format"] == "pcm16_16000hz"
    appended = [e["audio"] for e in model.received("input_audio_buffer.append")]
    assert b"".join(pybase64.b64decode(a) for a in appended) == bytes(acs.sent[None])
    heard = acs.received_pcm
    assert len(heard) > 16000 * 2 // 2 and reply.startswith(heard)  # not resampled, cut short
    [truncate] = model.received("conversation.item.truncate")
    [call] = calls
    assert call.player is not None
    released_ms = call.player.released_ms(truncate["item_id"])
    assert abs(truncate["audio_end_ms"] - released_ms) <= 20
    assert released_ms * 32 >= len(heard)  # 16 kHz: 32 bytes a ms; ACS dropped the rest


async def test_uplink_batch_ms_sets_how_much_caller_audio_each_event_carries(
    autojump_clock, monkeypatch
):
    """Each append event carries `uplink_batch_ms` of the caller (the last may carry less),
    the audio whole and in order; at the default, 40 ms. Also where the call's audio goes up
    unresampled at 16 kHz (Voice Live), whose frames' base64 cannot simply be joined."""
    monkeypatch.setenv(KEY_ENV, "k")
    for rate, provider in ((24000, "openai"), (16000, "voice-live")):
        # 2.34 s: no whole batches
        caller = speech(rate)[: rate * 2 * 2] + silence(rate, 0.34)
        for batch_ms in (40, 100):
            extra = {} if batch_ms == 40 else {"uplink_batch_ms": batch_ms}
            opts = options(model_url="", provider=provider, **extra)
            async with open_fake_model([]) as model:
                opts["endpoint"] = model.url
                async with open_gateway(spied(opts, [])) as server:
                    async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                        await acs.stream(caller)
                with trio.fail_after(5):
                    await model.wait_for(lambda m: m.live == 0)
            appended = [
                pybase64.b64decode(e["audio"]) for e in model.received("input_audio_buffer.append")
            ]
            batch_bytes = batch_ms * rate * 2 // 1000  # PCM16
            assert {len(a) for a in appended[:-1]} == {batch_bytes}, (rate, batch_ms)
            assert 0 < len(appended[-1]) < batch_bytes
            assert b"".join(appended) == bytes(acs.sent[None]) == caller


async def test_local_vad_stops_playback_before_the_model_reacts(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    # a slow model VAD: it needs 200 ms of speech; the local one needs 60 ms
    async with open_fake_model([speech(24000)], speech_start_ms=200) as model:
        opts = options(model.url, local_vad=True)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(conversation(16000))
    starts = model.sent_of("input_audio_buffer.speech_started")
    [stop_at] = acs.stop_times  # one stop: the model's later speech start adds none
    assert stop_at < starts[1].time - 0.1
    [truncate] = model.received("conversation.item.truncate")
    [call] = calls
    assert call.player is not None
    assert abs(truncate["audio_end_ms"] - call.player.released_ms(truncate["item_id"])) <= 20
    assert acs.audio_after_stop == []


class SmallSendBuffer(upstream.SocketTransport):
    """The gateway's upstream socket with a small kernel send buffer, so a model that stops
    reading blocks the gateway's sends within a few seconds of the caller's audio (the
    default grows to megabytes). Not smaller: with a few KB the sender's wake-up after the
    model reads again can wait for the kernel's delayed ACK, which runs on real time while
    the test's clock is virtual."""

    @classmethod
    def from_socket_stream(cls, stream: trio.SocketStream) -> upstream.SocketTransport:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        return super().from_socket_stream(stream)


async def test_the_local_vad_stops_the_bot_while_sending_to_the_model_waits(
    autojump_clock, monkeypatch
):
    """The model stops reading while its reply plays; the caller's audio fills the sockets
    between them, so sending it upstream waits. Both kernel buffers are fixed: the model's
    receive buffer, left to the kernel, grew with the first turn's reads, at times enough to
    take the caller's six seconds. When the caller then talks over the bot, the local VAD
    stops the bot at once: it acts where it hears the frame, not behind the model's socket."""
    monkeypatch.setenv(KEY_ENV, "k")
    monkeypatch.setattr(upstream, "SocketTransport", SmallSendBuffer)
    calls: list[Call] = []
    async with open_fake_model([speech(24000) * 2], receive_buffer=65536) as model:  # 15 s
        opts = options(model.url, local_vad=True, keepalive_interval=600.0)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(speech(16000)[: 16000 * 2 * 2] + silence(16000, 1.0))
                with trio.fail_after(5):  # the reply has begun
                    await model.wait_for(lambda m: m.sent_of("response.output_item.added"))
                model.go_silent()
                await acs.stream(silence(16000, 6.0))  # the caller listens
                [call] = calls
                unsent = call.stats.upstream_audio_dropped
                assert unsent > 0  # the outbox overflowed: sending upstream was stuck
                talked_at = trio.current_time()
                await acs.stream(speech(16000, "interrupt")[: 16000 * 2])
                assert acs.stop_times and acs.stop_times[0] - talked_at <= 0.2
                model.go_silent(False)  # it reads again: then it is told what was heard
                await acs.stream(silence(16000, 1.0))
    assert call.stats.barge_ins == 1
    assert acs.audio_after_stop == []
    [truncate] = model.received("conversation.item.truncate")
    assert call.player is not None
    assert abs(truncate["audio_end_ms"] - call.player.released_ms(truncate["item_id"])) <= 20


async def test_refused_upstream_with_hangup_policy_ends_the_call(
    autojump_clock, monkeypatch, caplog
):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    calls: list[Call] = []
    async with open_fake_model(api_key="right-key") as model:
        opts = options(model.url, on_upstream_failure="hangup")
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], connection_id="conn-7") as acs:
                with trio.fail_after(5):
                    await acs.closed.wait()
            await idle(server)
    assert acs.close_code == 1000
    [call] = calls
    assert upstream_errors(call) == 1 and call.stats.upstream_reconnects == 0
    failed = [r for r in caplog.records if "refused the session (HTTP 401)" in r.getMessage()]
    assert failed and failed[0].call_connection_id == "conn-7"
    assert "wrong-key" not in caplog.text


async def test_with_no_session_every_frame_of_the_caller_is_counted(autojump_clock, monkeypatch):
    """A model that takes the connection and never answers the upgrade: the caller's first
    second waits for the session in the bridge's outbox, the rest does not fit, then every
    attempt times out. Every frame the caller sent is counted as not sent upstream, and the
    call still ends cleanly when ACS hangs up."""
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    accepted: list[trio.SocketStream] = []

    async def mute(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1")
        [listener] = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        opts = options(f"ws://127.0.0.1:{port}", connect_timeout=1.5, backoff_initial_ms=100)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=24000) as acs:
                await acs.stream(speech(24000)[: 24000 * 2 * 4])  # 4 s: 200 frames
            await idle(server)
        nursery.cancel_scope.cancel()
    [call] = calls
    assert len(accepted) >= 2  # the first attempt timed out, and a second was made
    assert call.stats.upstream_audio_dropped == 200
    assert call.stats.audio_frames_dropped == 0  # the gateway's own queue dropped nothing


async def test_refusals_are_retried_with_back_off_then_the_call_ends(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model() as model:
        model.refuse(503)
        opts = options(model.url, max_reconnects=3, backoff_initial_ms=100, backoff_max_ms=300)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                started = trio.current_time()
                with trio.fail_after(5):
                    await acs.closed.wait()
                ended = trio.current_time()
            await idle(server)
    assert len(model.requests) == 4  # the first try and three more
    [call] = calls
    assert upstream_errors(call) == 4 and call.stats.upstream_reconnects == 3
    assert 0.1 + 0.2 + 0.3 <= ended - started < 0.7  # 100, 200, then capped at 300 ms


async def test_a_dropped_upstream_is_replaced_by_a_fresh_session(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model() as model:
        async with open_gateway(spied(options(model.url), calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(silence(16000, 1.0))
                await model.drop()
                await acs.stream(silence(16000, 1.0))
            await idle(server)
    assert model.connections == 2
    assert [r.connection for r in model.events if r.type == "session.update"] == [1, 2]
    appended = [
        len(r.event["audio"]) * 3 // 4
        for r in model.events
        if r.type == "input_audio_buffer.append" and r.connection == 2
    ]
    assert sum(appended) > 0.6 * 48000  # the caller's audio flows to the new session
    [call] = calls
    assert upstream_errors(call) == 1 and call.stats.upstream_reconnects == 1
    assert call.stats.upstream_audio_dropped > 0  # frames during the outage, counted


async def test_audio_held_for_a_failed_session_is_counted_not_sent_late_to_the_next(
    autojump_clock, monkeypatch
):
    """With 200 ms events the uplink holds up to 180 ms of the caller when a session fails:
    those frames are counted as dropped, and the next session hears the caller in order,
    without a jump back to before the gap."""
    monkeypatch.setenv(KEY_ENV, "k")
    frames = [bytes([k]) * 960 for k in range(1, 151)]  # 3 s at 24 kHz, each frame its own
    calls: list[Call] = []
    async with open_fake_model() as model:
        opts = options(model.url, uplink_batch_ms=200, backoff_initial_ms=50)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=24000) as acs:
                await acs.stream(b"".join(frames[:53]))  # 1.06 s: 3 frames past an event
                await model.drop()
                await acs.stream(b"".join(frames[53:]))
            await idle(server)
    assert model.connections == 2
    heard: dict[int, list[int]] = {1: [], 2: []}
    for r in model.events:
        if r.type == "input_audio_buffer.append":
            pcm = pybase64.b64decode(r.event["audio"])
            heard[r.connection] += [pcm[i] for i in range(0, len(pcm), 960)]
    assert heard[1] == list(range(1, len(heard[1]) + 1))  # from the start, in order
    second = heard[2]
    assert second and second == list(range(second[0], second[0] + len(second)))  # no jump
    [call] = calls
    # every frame the caller sent reached a session or was counted
    assert len(heard[1]) + len(second) + call.stats.upstream_audio_dropped >= len(frames)
    assert second[0] > len(heard[1]) + 3  # the held frames were not sent late


async def test_error_events_fatal_or_not(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model() as model:
        async with open_gateway(spied(options(model.url), calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(silence(16000, 0.5))
                await model.send_error("rate_limited", "invalid_request_error")  # recoverable
                await acs.stream(silence(16000, 0.5))
                assert model.connections == 1
                await model.send_error("internal", "server_error")  # the session is gone
                await acs.stream(silence(16000, 1.0))
            await idle(server)
    assert model.connections == 2
    [call] = calls
    assert upstream_errors(call) == 2 and call.stats.upstream_reconnects == 1


async def test_a_silent_upstream_is_noticed_and_the_call_ended(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    async with open_fake_model() as model:
        opts = options(
            model.url,
            keepalive_interval=1.0,
            keepalive_timeout=2.0,
            on_upstream_failure="hangup",
        )
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(silence(16000, 0.5))
                model.go_silent()
                silent_at = trio.current_time()
                with trio.fail_after(10):
                    await acs.closed.wait()
                ended = trio.current_time() - silent_at
            await idle(server)
            model.go_silent(False)
    assert acs.close_code == 1000
    assert ended <= 1.0 + 2.0 + 0.1  # next ping, plus its timeout
    [call] = calls
    assert upstream_errors(call) == 1


async def test_a_cancelled_call_closes_the_upstream(autojump_clock, monkeypatch):
    """The server drains (cancels) a live call: the model's socket closes with it."""
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model() as model:
        async with open_gateway(spied(options(model.url), [])) as server:
            tasks, fds = task_count(), open_fds()
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(silence(16000, 0.5))
                assert model.live == 1
                server.stop_now()
                with trio.fail_after(1):
                    await model.wait_for(lambda m: m.live == 0)
                    await acs.closed.wait()
            await idle(server)
            await trio.sleep(0.1)
            assert open_fds() <= fds and task_count() <= tasks


async def test_unmixed_stream_sends_one_participant_upstream(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    alice, bob = speech(24000)[:48000], silence(24000, 1.0)
    async with open_fake_model() as model:
        async with open_gateway(spied(options(model.url), [])) as server:
            async with simulated_call(server.urls[0], sample_rate=24000) as acs:
                await acs.stream({"8:acs:alice": alice, "8:acs:bob": bob})
            await idle(server)
    appended = [e["audio"] for e in model.received("input_audio_buffer.append")]
    assert b"".join(pybase64.b64decode(a) for a in appended) == alice


def upstream_errors(call) -> int:
    return sum(call.stats.upstream_errors.values())


def capped(monkeypatch: pytest.MonkeyPatch, cap: int) -> list[int]:
    """Cap the model audio a call may queue at `cap` bytes; returns the queued bytes after each
    delta was queued, as the test goes."""
    monkeypatch.setattr(downlink, "PENDING_AUDIO_BYTES", cap)
    queued: list[int] = []
    queue = downlink.Downlink.queue

    async def watched(self: downlink.Downlink, item_id: str, audio: str | None) -> None:
        await queue(self, item_id, audio)
        queued.append(self._bytes)

    monkeypatch.setattr(downlink.Downlink, "queue", watched)
    return queued


async def test_a_reply_far_ahead_of_the_caller_waits_in_the_models_socket(
    autojump_clock, monkeypatch
):
    """A model streaming far faster than real time: past the cap, the bridge stops reading it
    (the rest waits in the socket), so the call's memory stays bounded; all of the reply still
    plays, in order, nothing dropped."""
    monkeypatch.setenv(KEY_ENV, "k")
    cap = 24000 * 2  # one second of model audio
    queued = capped(monkeypatch, cap)
    reply = speech(24000)  # 7.6 s, sent in 100 ms deltas 40 times faster than real time
    calls: list[Call] = []
    async with open_fake_model([reply], speed=40.0) as model:
        async with open_gateway(spied(options(model.url), calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(speech(16000)[: 16000 * 2 * 2] + silence(16000, 10.0))
    delta = 24000 * 2 // 10
    assert cap <= max(queued) <= cap + delta  # the cap was reached, and held
    [call] = calls
    assert call.player is not None
    heard = len(acs.received_pcm)
    assert abs(heard - len(reply) * 2 // 3) <= 640  # the whole reply, at 16 kHz
    assert call.stats.upstream_audio_discarded == 0 and call.player.playout.stats.discarded == 0


async def test_the_local_vad_stops_a_reply_held_back_in_the_models_socket(
    autojump_clock, monkeypatch
):
    """With a reply far ahead of the caller (past the cap, part of it still in the model's
    socket), the model's `speech_started` waits behind that audio; the local VAD, which hears
    the caller directly, still stops the bot at once, and the held audio is then discarded."""
    monkeypatch.setenv(KEY_ENV, "k")
    queued = capped(monkeypatch, 24000 * 2)  # one second
    calls: list[Call] = []
    async with open_fake_model([speech(24000)], speed=40.0, speech_start_ms=200) as model:
        opts = options(model.url, local_vad=True)
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(conversation(16000))
    assert max(queued) >= 24000 * 2  # the reader did wait with the rest left in the socket
    starts = model.sent_of("input_audio_buffer.speech_started")
    assert len(starts) == 2
    [stop_at] = acs.stop_times
    assert stop_at < starts[1].time  # before the model itself heard the interruption
    assert acs.audio_after_stop == []
    [call] = calls
    assert call.stats.barge_ins == 1
    assert call.stats.upstream_audio_discarded > 0  # read after the stop, and dropped
    assert model.received("conversation.item.truncate")


async def test_a_model_that_sends_half_a_sample_does_not_end_the_call(autojump_clock, monkeypatch):
    """PCM16 is whole samples; a reply with one stray byte (its last delta odd) plays without
    it, the byte is counted, and the call goes on to the next reply."""
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    first, second = speech(24000)[: 24000 * 2] + b"\x01", speech(24000)[: 24000 * 2]
    turn = speech(16000)[: 16000 * 2 * 2] + silence(16000, 3.0)
    async with open_fake_model([first, second]) as model:
        async with open_gateway(spied(options(model.url), calls)) as server:
            async with simulated_call(server.urls[0], sample_rate=16000) as acs:
                await acs.stream(turn + turn)
            await idle(server)
    assert len(model.sent_of("response.done")) == 2
    assert acs.close_code == 1000  # the caller hung up: no processor error (1011)
    [call] = calls
    assert call.stats.upstream_audio_discarded == 1
    heard = len(acs.received_pcm)
    assert abs(heard - 2 * 16000 * 2) <= 1280  # both replies, 1 s each at 16 kHz


async def test_the_fake_models_echo_mode_answers_each_append_with_its_audio(
    autojump_clock, monkeypatch
):
    """`open_fake_model(echo=True)`: each append comes straight back as a delta of one long
    response, so where nothing is resampled the caller hears exactly what it said, in either
    dialect; with `echo_burst_ms` the deltas come in bursts, the same audio in the end."""
    monkeypatch.setenv(KEY_ENV, "k")
    for rate, provider, burst_ms in (
        (24000, "openai", 0),
        (16000, "voice-live", 0),
        (24000, "azure-preview", 200),
    ):
        said = speech(rate)[: rate * 2 * 108 // 100]  # 1.08 s: 27 appends of 40 ms
        async with open_fake_model(echo=True, echo_burst_ms=burst_ms) as model:
            opts = options(model.url, provider=provider)
            async with open_gateway(spied(opts, [])) as server:
                async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                    await acs.stream(said)
                    held = 0 if not burst_ms else len(said) % (burst_ms * rate * 2 // 1000)
                    await acs.wait_for_audio(len(said) - held)
                    await trio.sleep(0.5)  # a part burst is held until it fills
                    assert acs.received_pcm == said[: len(said) - held], (provider, burst_ms)
            with trio.fail_after(5):
                await model.wait_for(lambda m: m.live == 0)
        [update] = model.received("session.update")
        assert ("type" in update["session"]) == (provider == "openai")  # GA, or the beta shape
        assert [e.type for e in model.sent] == [
            "session.created",
            "session.updated",
            "response.created",
            "response.output_item.added",
        ]
        assert not model.received("input_audio_buffer.append")  # not kept: runs are long


async def test_the_fake_models_echo_sessions_expire_at_session_max_s(autojump_clock, monkeypatch):
    """Echo mode keeps the service's session limit: the session ends with `session_expired`
    at `session_max_s`, and the gateway goes on with the next session (the caller still heard
    its audio after the switch)."""
    monkeypatch.setenv(KEY_ENV, "k")
    rate = 24000
    said = speech(rate)[: rate * 2 * 3]  # 3 s: the session lasts 1
    async with open_fake_model(echo=True, session_max_s=1.0) as model:
        async with open_gateway(spied(options(model.url), [])) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                await acs.stream(said)
                await trio.sleep(0.5)
        with trio.fail_after(5):
            await model.wait_for(lambda m: m.live == 0)
    expired = [r for r in model.sent if r.type == "error"]
    assert {r.event["error"]["code"] for r in expired} == {"session_expired"}
    assert model.connections >= 3 and len(expired) >= 2
    # the audio after the last switch came through, up to the caller's last words (what was
    # said during each gap was dropped, counted: the audio before and after does not join)
    assert said.endswith(acs.received_pcm[-rate * 2 // 5 :])
