"""Inline audio handlers: a processor that offers `audio_handler(call)` hears the caller's audio
frames in the receive task, in order, and everything else through `call.packets`; what the
handler refuses is dropped and counted; its bug ends its own call with 1011 and no other."""

from __future__ import annotations

import contextlib
import traceback

import pybase64
import pytest
import trio
import trio_websocket

from gateway.acs.packets import AudioData, DtmfData
from gateway.call import CallSettings, EndReason
from gateway.call.interface import AudioHandler
from gateway.call.player import Player
from gateway.call.playout import Playout
from gateway.call.tasks import receive, wait_for_metadata
from gateway.processors import Call
from gateway.testing import ProcessorFailed, open_gateway, simulated_call
from tests.conftest import memory_call
from tests.test_call import DTMF, METADATA, FakeSocket, call_state
from tests.test_health import no_live_calls
from tests.test_limits import StallingStream
from tests.test_metrics import scrape, value

FRAME = 640  # bytes of one 20 ms frame at 16 kHz


def numbered(k: int) -> bytes:
    """A frame that says which it is."""
    return k.to_bytes(2, "little") * (FRAME // 2)


def number(frame: AudioData) -> int:
    return int.from_bytes(frame.pcm[:2], "little")


def audio_text(k: int) -> bytes:
    data = pybase64.b64encode(numbered(k)).decode()
    return b'{"kind":"AudioData","audioData":{"data":"%s"}}' % data.encode()


class Listener:
    """A processor that notes what its handler heard and what `packets` carried."""

    def __init__(self, refuse: int | None = None, fail_at: int | None = None) -> None:
        self.heard: list[int] = []
        self.packets: list[object] = []
        self.refuse = refuse  # refuse every frame whose number is a multiple of this
        self.fail_at = fail_at  # raise on the frame with this number

    def audio_handler(self, call: Call) -> AudioHandler | None:
        def hear(frame: AudioData) -> bool:
            k = number(frame)
            if k == self.fail_at:
                raise RuntimeError("handler bug")
            if self.refuse and k % self.refuse == 0:
                return False
            self.heard.append(k)
            return True

        return hear

    async def __call__(self, call: Call) -> None:
        async for packet in call.packets:
            self.packets.append(packet)


async def test_the_handler_hears_every_frame_in_order_and_packets_the_rest(autojump_clock):
    listener = Listener()
    async with memory_call(listener) as mc:
        for k in range(60):
            await mc.peer.send_audio(numbered(k))
            if k % 20 == 0:
                await mc.peer.send_dtmf(str(k // 20))
        await trio.sleep(1)
    assert listener.heard == list(range(60))
    assert all(type(p) is DtmfData for p in listener.packets)  # no audio in `packets`
    assert [p.tone for p in listener.packets] == ["0", "1", "2"]  # type: ignore[attr-defined]
    stats = mc.result.stats
    assert stats.audio_frames_in == 60 and stats.audio_frames_dropped == 0


async def test_frames_read_with_the_metadata_go_to_the_handler_too(autojump_clock):
    """Frames that came in the read that brought the first metadata wait in `state.early`;
    they reach the handler first, in order, and not `packets`."""
    audio = [audio_text(k) for k in range(5)]
    state = call_state(FakeSocket([METADATA, audio[0], DTMF, audio[1]], audio[2:4], [audio[4]]))
    assert await wait_for_metadata(state) is not None
    listener = Listener()
    send, receive_channel = trio.open_memory_channel[object](10)
    await receive(state, send, listener, None)  # runs until the fake ACS hangs up
    assert listener.heard == [0, 1, 2, 3, 4]
    packets = [p async for p in receive_channel]  # the receive task closed its end
    assert [type(p) for p in packets] == [DtmfData]


async def test_frames_the_handler_refuses_are_dropped_and_counted(autojump_clock, caplog):
    listener = Listener(refuse=3)
    async with memory_call(listener) as mc:
        for k in range(1, 61):
            await mc.peer.send_audio(numbered(k))
        await trio.sleep(1)
    stats = mc.result.stats
    assert stats.audio_frames_in == 60
    assert stats.audio_frames_dropped == 20
    assert len(listener.heard) + stats.audio_frames_dropped == 60  # nothing lost uncounted
    warnings = [r for r in caplog.records if "dropping inbound audio" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("where", ["handler", "factory"])
async def test_a_handler_bug_ends_its_call_with_1011_and_no_other(autojump_clock, caplog, where):
    class Broken(Listener):
        def audio_handler(self, call: Call) -> AudioHandler | None:
            if where == "factory":
                raise RuntimeError("factory bug")
            return super().audio_handler(call)

    broken = Broken(fail_at=3)
    async with memory_call("echo") as good:
        async with memory_call(broken, connection_id="conn-7") as bad:
            for k in range(1, 6):
                await good.peer.send_audio(numbered(k))
                with contextlib.suppress(trio_websocket.ConnectionClosed):  # once it failed
                    await bad.peer.send_audio(numbered(k))
            with trio.fail_after(5):
                await bad.peer.closed.wait()
        await good.peer.stream(bytes(FRAME * 20))
        with trio.fail_after(5):
            await good.peer.wait_for_audio(FRAME * 25)
        assert not good.peer.closed.is_set()
    assert bad.peer.close_code == 1011
    assert bad.result.ended_by == EndReason.PROCESSOR_ERROR
    assert isinstance(bad.result.error, RuntimeError)
    assert str(bad.result.error) == f"{where} bug"
    failures = [r for r in caplog.records if "processor failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].call_connection_id == "conn-7"
    assert failures[0].exc_info and failures[0].exc_info[1] is bad.result.error  # its traceback
    assert good.result.ended_by == EndReason.HANGUP


async def test_echo_drops_and_counts_what_a_stalled_acs_leaves_no_room_for(autojump_clock):
    """ACS stops reading: the player's queue fills, and from then on echo's handler refuses
    frames. Every frame is echoed, still queued, or counted as dropped."""
    stalling: list[StallingStream] = []

    def stalling_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.lockstep_stream_pair()
        stalling.append(StallingStream(client))
        return stalling[-1], server

    settings = CallSettings(playout_queue_ms=200)
    async with memory_call("echo", settings, stream_pair=stalling_pair, send_timeout=1000) as mc:
        await mc.peer.stream(bytes(FRAME * 5))
        with trio.fail_after(5):
            await mc.peer.wait_for_audio(FRAME * 5)
        stalling[0].stalled = True
        await mc.peer.stream(bytes(FRAME * 100))  # 2 s, in real time
        stalling[0].stalled = False
        await trio.sleep(1)
    stats = mc.result.stats
    playout = mc.result.call.player.playout.stats
    assert stats.audio_frames_in == 105
    assert stats.audio_frames_dropped > 0
    assert playout.accepted // FRAME + stats.audio_frames_dropped == 105
    assert playout.accepted == playout.released + playout.unsent_at_end


async def test_inline_frames_are_timed_like_packets():
    """`processing_latency_seconds` counts every frame the handler heard, and every tone."""
    async with open_gateway() as server:  # echo: inline
        async with simulated_call(server.urls[0]) as call:
            await call.stream(bytes(FRAME * 12))
            with trio.fail_after(10):
                await call.wait_for_audio(FRAME * 12)
            await call.send_dtmf("5")
            await trio.sleep(0.1)
        await no_live_calls(server)
        m = scrape(server.metrics)
    assert value(m, "audio_frames_in_total") == 12
    assert value(m, "processing_latency_seconds_count") == 13


def test_play_nowait_queues_whole_or_nothing():
    now = [0.0]
    player = Player(Playout(16000, lead_ms=20, capacity_ms=100), clock=lambda: now[0])
    assert player.play_nowait(bytes(FRAME * 4))  # 80 of 100 ms
    assert not player.play_nowait(bytes(FRAME * 2))  # 40 ms does not fit: none of it queued
    assert player.playout.stats.accepted == FRAME * 4
    assert player.play_nowait(bytes(FRAME))
    with pytest.raises(ValueError, match="whole samples"):
        player.play_nowait(bytes(3))
    player.close()
    assert player.play_nowait(bytes(FRAME * 50))  # the call is over: discarded, counted
    assert player.playout.stats.discarded == FRAME * 50


async def test_echo_called_by_another_processor_still_echoes(autojump_clock):
    """A processor that wraps echo's coroutine (and offers no handler) gets audio in
    `packets`, and echo plays it from there."""
    from gateway.processors import load

    echo = load("echo")

    async def wrapper(call: Call) -> None:
        await echo(call)

    async with memory_call(wrapper) as mc:
        await mc.peer.stream(bytes(range(256)) * 10)
        with trio.fail_after(5):
            await mc.peer.wait_for_audio(2560)
        assert mc.peer.received_pcm == bytes(range(256)) * 10


async def test_the_test_helpers_report_a_handler_bug_as_the_processors():
    """`open_gateway` keeps the processor's handler, and `simulated_call` raises what it
    raised as `ProcessorFailed`, with the handler's own traceback."""
    async with open_gateway(Listener(fail_at=2)) as server:
        with pytest.raises(ProcessorFailed) as failed:
            async with simulated_call(server.urls[0]) as call:
                for k in range(1, 4):
                    await call.send_audio(numbered(k))
                await call.wait_for_audio(FRAME)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert str(failed.value.__cause__) == "handler bug"
    where = traceback.extract_tb(failed.value.__cause__.__traceback__)
    assert where[-1].name == "hear"
