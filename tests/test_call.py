"""The call: task layout, channel policies, lifecycle, and error policy, over memory streams on
the autojump clock (exact times, no sockets)."""

from __future__ import annotations

import logging

import pytest
import trio

from gateway.acs.packets import AudioData, AudioMetadata, DtmfData
from gateway.call import CallSettings, EndReason
from gateway.call.interface import CallStats
from gateway.call.state import CallState
from gateway.call.tasks import wait_for_metadata, watch
from gateway.logs import call_logger
from gateway.processors import Call, Processor
from gateway.testing import frames, speech
from gateway.wire.websocket import ConnectionClosed
from tests.conftest import memory_call, task_count


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_echo_is_byte_exact_and_immediate(autojump_clock, rate):
    pcm = speech(rate)[: rate * 2]  # 1 s of real speech
    async with memory_call(sample_rate=rate) as mc:
        start = trio.current_time()
        await mc.peer.stream(pcm)
        await mc.peer.wait_for_audio(len(pcm))
        assert mc.peer.received_pcm == pcm
        # Each frame is echoed the moment it arrives (the lead window never holds it back).
        times = [r.time - start for r in mc.peer.received]
        assert times == pytest.approx([k * 0.020 for k in range(50)], abs=1e-9)
    assert mc.result.ended_by == EndReason.HANGUP
    assert mc.result.stats.audio_frames_in == 50
    assert mc.result.stats.messages_out == 50


async def test_processor_return_closes_the_call_normally(autojump_clock):
    async def hello_then_hang_up(call: Call) -> None:
        assert call.player is not None
        await call.player.play(bytes(640 * 10))
        await call.player.drain()

    async with memory_call(hello_then_hang_up) as mc:
        await mc.peer.closed.wait()
    assert mc.peer.close_code == 1000
    assert len(mc.peer.received_pcm) == 640 * 10
    assert mc.result.ended_by == EndReason.PROCESSOR


async def test_processor_error_closes_with_1011_and_is_logged(autojump_clock, caplog):
    async def broken(call: Call) -> None:
        async for _ in call.packets:
            raise RuntimeError("processor bug")

    async with memory_call(broken, connection_id="conn-42") as mc:
        await mc.peer.send_audio(bytes(640))
        await mc.peer.closed.wait()
    assert mc.peer.close_code == 1011
    assert mc.result.ended_by == EndReason.PROCESSOR_ERROR
    assert isinstance(mc.result.error, RuntimeError)
    failures = [r for r in caplog.records if "processor failed" in r.getMessage()]
    assert failures and failures[0].call_connection_id == "conn-42"


async def test_hang_up_ends_packets_and_the_processor_returns(autojump_clock):
    seen = []

    async def reader(call: Call) -> None:
        async for packet in call.packets:
            seen.append(packet)
        seen.append("end")

    async with memory_call(reader) as mc:
        await mc.peer.send_audio(bytes(640))
        await mc.peer.send_dtmf("5")
        await mc.peer.hang_up()
    assert [type(p) for p in seen] == [AudioData, DtmfData, str]
    assert mc.result.ended_by == EndReason.HANGUP


async def test_processor_ignoring_hang_up_is_cancelled_after_grace(autojump_clock):
    cancelled_at = []

    async def stubborn(call: Call) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise

    settings = CallSettings(hangup_grace=1.5)
    async with memory_call(stubborn, settings) as mc:
        await trio.sleep(1)
        hung_up = trio.current_time()
        await mc.peer.hang_up()
    # memory_call returns once the gateway's side of the call has ended
    assert mc.outcome
    assert cancelled_at[0] - hung_up == pytest.approx(1.5, abs=0.01)


async def test_slow_processor_drops_audio_counted_but_never_control(autojump_clock):
    got: list[object] = []

    async def slow(call: Call) -> None:
        async for packet in call.packets:
            got.append(packet)
            await trio.sleep(0.1)  # five times slower than real time

    settings = CallSettings(inbound_queue_ms=200)  # 10 frames
    async with memory_call(slow, settings) as mc:
        for k in range(100):
            await mc.peer.send_audio(bytes(640))
            if k % 10 == 0:
                await mc.peer.send_dtmf(str(k // 10))
        await trio.sleep(30)
    stats = mc.result.stats
    audio = [p for p in got if isinstance(p, AudioData)]
    dtmf = [p.tone for p in got if isinstance(p, DtmfData)]
    assert dtmf == [str(i) for i in range(10)]  # control: all, in order
    assert stats.audio_frames_in == 100
    assert stats.audio_frames_dropped > 0
    assert len(audio) + stats.audio_frames_dropped == 100  # nothing lost uncounted


MALFORMED = {
    "not_json": "{not json",
    "not_utf8": b"\xff\xfe{}",
    "unknown_kind": '{"kind":"Hologram","hologram":{}}',
    "missing_payload": '{"kind":"AudioData"}',
    "bad_base64": '{"kind":"AudioData","audioData":{"data":"@@@@"}}',
    "odd_length": '{"kind":"AudioData","audioData":{"data":"AA=="}}',
    "wrong_type": '{"kind":"AudioData","audioData":{"data":12}}',
    "not_object": "[1,2,3]",
}


async def test_malformed_packets_are_skipped_and_counted(autojump_clock):
    pcm = b"".join(frames(speech(16000)[:32000], 16000))
    async with memory_call() as mc:
        good = frames(pcm, 16000)
        for k, frame in enumerate(good):
            await mc.peer.send_audio(frame)
            bad = list(MALFORMED.values())[k % len(MALFORMED)]
            await mc.peer.send_raw(bad)
        await mc.peer.wait_for_audio(len(pcm))
        assert mc.peer.received_pcm == pcm
    errors = mc.result.stats.protocol_errors
    assert set(errors) == set(MALFORMED)
    assert sum(errors.values()) == len(good)


async def test_too_many_malformed_in_a_row_closes_with_1007(autojump_clock):
    async with memory_call(settings=CallSettings(max_consecutive_errors=5)) as mc:
        for _ in range(5):
            await mc.peer.send_raw("garbage")
        await mc.peer.closed.wait()
    assert mc.peer.close_code == 1007
    assert mc.result.ended_by == EndReason.PROTOCOL


async def test_unknown_kinds_never_close_the_call(autojump_clock):
    async with memory_call(settings=CallSettings(max_consecutive_errors=5)) as mc:
        for _ in range(20):
            await mc.peer.send_raw('{"kind":"DtmfMetadata","dtmfMetadata":{"data":"1"}}')
        await mc.peer.send_audio(bytes(640))
        await mc.peer.wait_for_audio(640)
        assert not mc.peer.closed.is_set()
    assert mc.result.stats.protocol_errors["unknown_kind"] == 20


async def test_audio_before_metadata_is_skipped(autojump_clock):
    async with memory_call(send_metadata=False) as mc:
        await mc.peer.send_audio(b"\x01\x00" * 320)
        await mc.peer.send_metadata()
        await mc.peer.send_audio(b"\x02\x00" * 320)
        await mc.peer.wait_for_audio(640)
        assert mc.peer.received_pcm == b"\x02\x00" * 320
    assert mc.result.stats.protocol_errors["audio_before_metadata"] == 1


async def test_no_metadata_closes_after_the_timeout(autojump_clock):
    async with memory_call(settings=CallSettings(metadata_timeout=3), send_metadata=False) as mc:
        start = trio.current_time()
        await mc.peer.closed.wait()
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
    assert mc.peer.close_code == 1007
    assert mc.result.ended_by == EndReason.TIMEOUT


def bot_stopped_by_a_key(released_ms: list[float]) -> Processor:
    """Queues 5 s of bot audio at once; a key (standing in for the caller speaking) stops it,
    and what had been released of it goes to `released_ms`."""
    bot = b"\x10\x00" * 16000 * 5

    async def bot_speaks(call: Call) -> None:
        player = call.player
        assert player is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(player.play, bot, "reply-1")
            async for packet in call.packets:
                if isinstance(packet, DtmfData):
                    player.stop()
                    released_ms.append(player.released_ms("reply-1"))

    return bot_speaks


async def test_barge_in_stops_queued_audio_at_once(autojump_clock):
    heard_ms: list[float] = []
    bot_speaks = bot_stopped_by_a_key(heard_ms)
    async with memory_call(bot_speaks, CallSettings(playout_lead_ms=60)) as mc:
        await trio.sleep(1.0)
        barge_in = trio.current_time()
        await mc.peer.send_dtmf("1")
        await mc.peer.wait_for(lambda p: p.stop_times)
        await trio.sleep(1.0)
        stop = mc.peer.stop_times[0]
        assert stop - barge_in < 1e-6  # same instant on the autojump clock
        assert mc.peer.audio_after_stop == []  # no bot audio after the stop
        # the gateway had released 1 s + the lead (60 ms, or 40 ms if the frame due at the
        # same instant as the barge-in had not gone yet); ACS had played 1 s of it
        assert len(heard_ms) == 1 and heard_ms[0] in (pytest.approx(1040), pytest.approx(1060))
        assert len(mc.peer.received_pcm) == round(heard_ms[0] * 32)
        assert len(mc.peer.playback.heard()) == 1000 * 32
        await mc.peer.hang_up()
    stats = mc.result.stats
    assert stats.stop_audio_sent == 1


@pytest.mark.parametrize(("step_ms", "released_ms"), [(20, 1080), (40, 1060)])
async def test_the_playout_step_sets_how_far_ahead_acs_is_topped_up(
    autojump_clock, step_ms, released_ms
):
    """With a lead of 60 ms, a barge-in 1.03 s into a reply: a frame per write has the lead
    ahead of the last release (at 1.02 s); two frames per write topped ACS up at 1.00 s, so it
    was sent 20 ms less. Either way the caller heard 1.03 s and nothing after the stop."""
    released: list[float] = []
    settings = CallSettings(playout_lead_ms=60, playout_step_ms=step_ms)
    async with memory_call(bot_stopped_by_a_key(released), settings) as mc:
        await trio.sleep(1.03)
        await mc.peer.send_dtmf("1")
        await mc.peer.wait_for(lambda p: p.stop_times)
        assert released == [pytest.approx(released_ms)]
        assert mc.peer.audio_after_stop == []
        assert len(mc.peer.playback.heard()) == 1030 * 32
        await mc.peer.hang_up()


async def test_many_calls_leave_no_tasks_behind(autojump_clock):
    before = task_count()
    for _ in range(20):
        async with memory_call() as mc:
            await mc.peer.stream(bytes(640 * 5))
            await mc.peer.wait_for_audio(640 * 5)
    assert task_count() == before


async def test_transcription_only_stream(autojump_clock):
    got = []

    async def reader(call: Call) -> None:
        assert call.player is None and call.transcription is not None
        async for packet in call.packets:
            got.append(packet)

    async with memory_call(reader, send_metadata=False) as mc:
        await mc.peer.send_json(
            {"kind": "TranscriptionMetadata", "transcriptionMetadata": {"locale": "en-us"}}
        )
        await mc.peer.send_json(
            {
                "kind": "TranscriptionData",
                "transcriptionData": {"text": "hi", "resultStatus": "Final"},
            }
        )
        await trio.sleep(0.1)
    assert [p.text for p in got] == ["hi"]


async def test_call_log_lines_carry_the_call_ids(autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    async with memory_call(connection_id="conn-1", correlation_id="corr-1") as mc:
        await mc.peer.send_audio(bytes(640))
        await mc.peer.wait_for_audio(640)
    lines = [r for r in caplog.records if r.name == "gateway.call"]
    assert lines and all(r.call_connection_id == "conn-1" for r in lines)
    assert all(r.call_correlation_id == "corr-1" for r in lines)


async def test_processor_returning_at_once_closes_cleanly_every_time(autojump_clock):
    """Regression: close() and the receive task must never read the socket at the same time,
    whichever task Trio happens to run first."""

    async def bye(call: Call) -> None:
        return

    for _ in range(30):
        async with memory_call(bye) as mc:
            await mc.peer.closed.wait()
        assert mc.peer.close_code == 1000
        assert mc.result.ended_by == EndReason.PROCESSOR


async def test_what_a_call_leaves_behind_is_counted(autojump_clock):
    async def leaves_early(call: Call) -> None:
        assert call.player is not None
        await call.player.play(bytes(640 * 50))  # 1 s queued; only the lead goes out at once
        await trio.sleep(0.1)

    async with memory_call(leaves_early) as mc:
        for _ in range(3):
            await mc.peer.send_dtmf("1")  # never read
        await mc.peer.closed.wait()
    stats = mc.result.stats
    assert stats.packets_unread == 3
    playout = mc.result.call.player.playout.stats
    assert playout.accepted == playout.released + playout.unsent_at_end
    assert playout.unsent_at_end > 0 and playout.released == len(mc.peer.received_pcm)


async def test_processor_looping_on_play_after_hang_up_cannot_freeze_the_loop():
    """play() and drain() on a closed call still yield: a processor that loops on them (and
    never reads `packets`) is cancelled after `hangup_grace` like any other, instead of
    spinning forever with the event loop, and every other call, stuck behind it. Real clock:
    a task that is always runnable never lets the autojump clock jump. Against the bug this
    test hangs (nothing in-process can interrupt a task that never yields)."""
    loops = 0

    async def chatterbox(call: Call) -> None:
        nonlocal loops
        assert call.player is not None
        while True:
            await call.player.play(bytes(640))
            await call.player.drain()
            loops += 1

    settings = CallSettings(hangup_grace=0.5)
    async with memory_call(chatterbox, settings) as mc:
        await trio.sleep(0.2)
        await mc.peer.hang_up()
    # memory_call returns once the gateway's side of the call has ended
    assert mc.result.ended_by == EndReason.HANGUP
    assert loops > 0
    assert mc.result.call.player.playout.stats.discarded > 0


# -- the parts alone: the call state, the packet-reading routine, the metadata wait, watch --


class FakeSocket:
    """What the call's state reads and closes, without a WebSocket: each `reads` entry is the
    message list of one `receive_messages`; after the last one, ACS hangs up."""

    def __init__(self, *reads: list[bytes | bytearray]) -> None:
        self.reads = list(reads)
        self.pings_received = 0
        self.closed: list[tuple[int, str]] = []

    async def receive_messages(self) -> list[bytes | bytearray]:
        await trio.lowlevel.checkpoint()
        if not self.reads:
            raise ConnectionClosed(1000, "bye")
        return self.reads.pop(0)

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


METADATA = b'{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000}}'
AUDIO = b'{"kind":"AudioData","audioData":{"data":"AAA="}}'
DTMF = b'{"kind":"DtmfData","dtmfData":{"data":"5"}}'


def call_state(ws: FakeSocket, **settings: float) -> CallState:
    return CallState(ws, CallSettings(**settings), call_logger(None, None, "fake"), CallStats())


async def test_the_first_end_reason_is_the_one_reported(autojump_clock):
    state = call_state(FakeSocket())
    assert state.outcome().ended_by == EndReason.CANCELLED  # nobody ended it: drained
    assert state.end(EndReason.HANGUP, 1000)
    assert not state.end(EndReason.PROCESSOR, 1000)
    outcome = state.outcome()
    assert (outcome.ended_by, outcome.close_code) == (EndReason.HANGUP, 1000)
    assert outcome.ended_by == "hangup"  # the metric label and the log word


async def test_read_packets_skips_and_counts_malformed_ones(autojump_clock):
    state = call_state(FakeSocket([METADATA, b"garbage", AUDIO]))
    packets = await state.read_packets()
    assert [type(p) for p in packets] == [AudioMetadata, AudioData]
    assert state.stats.protocol_errors == {"not_json": 1}


async def test_the_metadata_wait_keeps_what_came_with_it(autojump_clock):
    state = call_state(FakeSocket([DTMF], [METADATA, AUDIO]))
    first = await wait_for_metadata(state)
    assert isinstance(first, AudioMetadata) and first.sample_rate == 16000
    assert [type(p) for p, _ in state.early] == [DtmfData, AudioData]
    assert (state.stats.packets_in, state.stats.audio_frames_in) == (2, 1)
    assert state.ended_by is None


async def test_the_metadata_wait_reports_a_hang_up(autojump_clock):
    state = call_state(FakeSocket([DTMF]))
    assert await wait_for_metadata(state) is None
    assert (state.ended_by, state.close_code) == (EndReason.HANGUP, 1000)
    assert state.ws.closed == []


async def test_watch_closes_an_idle_call(autojump_clock):
    ws = FakeSocket()
    state = call_state(ws, idle_timeout=5, max_call_duration=1000)
    start = trio.current_time()
    with state.scope:
        await watch(state)
    assert trio.current_time() - start == pytest.approx(5)
    assert (state.ended_by, state.close_code) == (EndReason.IDLE, 1000)
    assert ws.closed == [(1000, "no inbound audio for 5 s")]
