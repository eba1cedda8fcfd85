"""Faults: peers that reset mid-frame, vanish without a FIN, or stop reading; an event loop
blocked for a while; processors that raise, hang, or wait on an upstream that stalls.

Each ends with the affected call closed, counted (`ended_by`, `calls_failed`) and cleaned up
(no task or file descriptor left), and every other call intact (its echo byte-exact). Real
sockets on 127.0.0.1 where the fault is a socket's; memory streams on the autojump clock where
the fault is about time. (Resets of whole connections at random points: tests/test_fuzz_live.py.)
"""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from gateway.call import CallSettings, EndReason
from gateway.processors import Call, load
from gateway.server.serve import Server
from gateway.testing import open_gateway, simulated_call
from gateway.testing.hostile import (
    UPGRADE,
    RawPeer,
    canary_frame,
    client_frame,
    encode,
    good_connection,
    keep_talking,
    metadata_packet,
)
from gateway.testing.peer import SimulatedCall
from tests.conftest import memory_call, open_fds, task_count
from tests.test_fuzz_live import _run_hostile
from tests.test_limits import StallingStream, _send_at

METADATA = client_frame(encode(metadata_packet()))
SAFETY = 10.0  # seconds: a fail_after net for waits that end at once when things work


async def settled(server: Server, tasks: int, fds: int, live: int = 1) -> None:
    """Wait until only `live` calls remain and the census is back to (tasks, fds)."""
    with trio.fail_after(SAFETY):
        while server.live > live or task_count() != tasks or open_fds() != fds:  # noqa: ASYNC110
            await trio.sleep(0.01)


@asynccontextmanager
async def canary(server: Server) -> AsyncIterator[SimulatedCall]:
    """A good call that talks in real time for the whole block; after it, the call must still
    be up and its echo byte-exact."""
    async with simulated_call(server.urls[0], connection_id="canary") as call:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_talking, call, stop)
            with trio.fail_after(SAFETY):
                await call.wait_for_audio(640)
            yield call
            stop.set()
        with trio.fail_after(SAFETY):
            await call.wait_for_audio(len(call.sent[None]))
        assert call.received_pcm == bytes(call.sent[None])
        assert not call.closed.is_set()


async def test_a_bad_frame_right_behind_the_upgrade_closes_only_that_call():
    """Regression (found by tests/test_fuzz_live.py): a frame that arrived in the same read as
    the upgrade request was parsed inside the handshake, so its FramingError escaped to the
    server's error boundary and counted as a gateway failure instead of closing the call."""
    async with open_gateway() as server:
        peer = await RawPeer.open(server.urls[0])
        await peer.send(UPGRADE + b"\r\n" + METADATA + client_frame(b"\xff\xfe not UTF-8"))
        await peer.stream.send_eof()  # and nothing more: the gateway's close is not waited on
        with trio.fail_after(5):
            reply = await peer.read_until_closed()
        await peer.stream.aclose()
    head, _, frames = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames[0] == 0x88 and frames[2:4] == struct.pack("!H", 1007)  # close: not UTF-8
    assert server.stats.calls_failed == 0
    assert sum(server.stats.ended_by.values()) == 1


async def test_an_ended_call_leaves_no_reference_cycles():
    """Regression (found by bench/soak.py, RSS creeping up under call churn): the WebSocket
    raised the exception it stores in `closed`, so the exception's traceback held the frames
    that held the WebSocket, a cycle that kept every ended call's objects alive until the
    cyclic GC's next full collection (rare after `gc.freeze()`)."""

    async def one_call(url: str) -> None:
        async with simulated_call(url) as call:
            await call.stream(bytes(640 * 3), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640 * 3)

    async with open_gateway(playout_lead_ms=5000) as server:
        await one_call(server.urls[0])  # first-use allocations
        gc.collect()  # before the census: earlier tests' garbage may still hold sockets
        tasks, fds = task_count(), open_fds()
        gc.disable()
        try:
            for _ in range(5):
                await one_call(server.urls[0])
            await settled(server, tasks, fds, live=0)
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert server.stats.calls_accepted == 6
    assert unreachable == 0


# -- peers --

GOOD = good_connection(__import__("random").Random(5))
HEAD = len(UPGRADE) + 2  # where the upgrade request ends
AUDIO = HEAD + len(METADATA)  # the first audio frame: 2 header bytes, 2 of length, 4 of mask
CUTS = {
    "mid-upgrade": HEAD // 2,
    "right-after-upgrade": HEAD,
    "mid-header": AUDIO + 1,
    "mid-length": AUDIO + 3,
    "mid-mask": AUDIO + 6,
    "mid-payload": AUDIO + 500,
}


@pytest.mark.parametrize("cut", CUTS.values(), ids=list(CUTS))
async def test_a_reset_mid_frame_ends_only_that_call(cut):
    """TCP reset at named points of a good connection (any byte: tests/test_fuzz_live.py);
    `_run_hostile` checks the canary and the census, here what was counted."""
    stats = await _run_hostile([], [GOOD[:cut]])
    if cut < HEAD:
        assert (stats.handshakes_failed, stats.calls_accepted) == (1, 1)  # the canary only
    else:  # accepted and hung up, or (reset before the 101 went out) a failed handshake
        assert stats.calls_accepted + stats.handshakes_failed == 2
        assert stats.ended_by["hangup"] == stats.calls_accepted
    assert stats.calls_failed == 0


async def test_half_open_connections_are_dropped_at_every_stage():
    """A peer that vanishes without a FIN (power loss, a NAT that forgot the flow) looks, from
    here, like one that sends nothing and never reads a reply: each stage has a timeout."""
    async with open_gateway(
        handshake_timeout=0.3, metadata_timeout=0.3, idle_timeout=0.3
    ) as server:
        url = server.urls[0]
        async with canary(server):
            tasks, fds = task_count(), open_fds()
            in_handshake = await RawPeer.open(url)
            await in_handshake.send(UPGRADE)  # the request's last empty line never comes
            before_metadata = await RawPeer.connect(url)
            in_call = await RawPeer.connect(url)
            await in_call.send(METADATA + client_frame(encode(metadata_packet())))
            replies: dict[str, bytes] = {}

            async def vanished(name: str, peer: RawPeer) -> None:
                replies[name] = await peer.read_until_closed()  # and never answers a close
                await peer.stream.aclose()

            with trio.fail_after(SAFETY):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(vanished, "in_handshake", in_handshake)
                    nursery.start_soon(vanished, "before_metadata", before_metadata)
                    nursery.start_soon(vanished, "in_call", in_call)
            await settled(server, tasks, fds)
    assert replies["in_handshake"] == b""
    assert _close_code(replies["before_metadata"]) == 1007  # no AudioMetadata
    assert _close_code(replies["in_call"]) == 1000  # idle: no inbound audio
    stats = server.stats
    assert stats.handshakes_failed == 1
    assert (stats.ended_by["timeout"], stats.ended_by["idle"]) == (1, 1)
    assert stats.calls_failed == 0


def _close_code(reply: bytes) -> int:
    """The code of the close frame that ends `reply` (an upgrade reply and server frames)."""
    _, _, frames = reply.partition(b"\r\n\r\n")
    at = frames.rindex(b"\x88")
    return int.from_bytes(frames[at + 2 : at + 4], "big")


class TrickleStream(StallingStream):
    """The ACS end of a stream pair that, once `stalled`, reads one byte a second: a reader
    too slow to be useful but never quite stopped."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.stalled:
            await trio.sleep(1.0)
            return await self.inner.receive_some(1)
        return await self.inner.receive_some(max_bytes)


async def test_a_trickling_reader_is_closed_within_send_timeout(autojump_clock):
    """Like a peer that stops reading (tests/test_limits.py), one that reads a byte a second
    cannot hold a write longer than `send_timeout`; the other call is untouched and no task
    is left. Lockstep streams: a write completes only as the peer reads it."""
    slow: list[TrickleStream] = []

    def trickle_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.lockstep_stream_pair()
        slow.append(TrickleStream(client))
        return slow[-1], server

    audio = b"".join(canary_frame(k) for k in range(150))  # 3 s
    tasks = task_count()
    async with memory_call("echo", stream_pair=trickle_pair, send_timeout=2) as trickling:
        async with memory_call(
            "echo", stream_pair=trio.testing.lockstep_stream_pair, send_timeout=2
        ) as good:
            await trickling.peer.stream(audio[: 640 * 5])
            await trickling.peer.wait_for_audio(640 * 5)
            slow[0].stalled = True
            start = trio.current_time()
            ended: list[float] = []

            async def note_the_end() -> None:
                while not trickling.outcome:  # noqa: ASYNC110  (run_call's result, no event)
                    await trio.sleep(0.01)
                ended.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_at, trickling.peer, 50, 3)  # it keeps talking
                nursery.start_soon(note_the_end)
                await good.peer.stream(audio)
                await good.peer.wait_for_audio(len(audio))
            assert ended, "the trickling call is still running"
            assert good.peer.received_pcm == audio
            assert not good.peer.closed.is_set()
    assert trickling.result.ended_by == EndReason.SEND_TIMEOUT
    # the first echo after the stall could not go out; it gave up send_timeout later
    # the first echo after the stall went out (the reader was mid-read); the next one, 20 ms
    # later, never completed and was given up send_timeout after it started
    assert 2.0 <= ended[0] - start <= 2.0 + 0.02 + 0.01
    assert good.result.ended_by == EndReason.HANGUP
    assert task_count() == tasks


# -- the event loop --


async def test_a_blocked_event_loop_delays_every_call_but_loses_no_audio(autojump_clock):
    """One call's processor blocks the whole event loop for 200 ms (as `time.sleep(0.2)` would:
    on the autojump clock, `jump` moves time with no task running). Every call's peer then
    sends its backlog at once; the gateway takes it all and the echo catches up: every byte,
    in order, nothing dropped, and no call later than the stall itself."""
    echo = load("echo")

    async def blocks_once(call: Call) -> None:
        packets = 0
        async for packet in call.packets:
            packets += 1
            if packets == 25:
                autojump_clock.jump(0.2)  # nothing else runs meanwhile
            assert call.player is not None
            await call.player.play(packet.pcm)  # type: ignore[union-attr]

    audio = b"".join(canary_frame(k) for k in range(100))  # 2 s each
    async with memory_call(blocks_once) as blocker, memory_call(echo) as a, memory_call(echo) as b:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for mc in (blocker, a, b):
                nursery.start_soon(mc.peer.stream, audio)
        for mc in (blocker, a, b):
            await mc.peer.wait_for_audio(len(audio))
            assert mc.peer.received_pcm == audio
            # the last frame was sent at 1.98 s + the 0.2 s stall; its echo is not held longer
            assert mc.peer.received[-1].time - start <= 1.98 + 0.2 + 1e-6
    for mc in (blocker, a, b):
        assert mc.result.stats.audio_frames_dropped == 0
        assert mc.result.stats.messages_out == 100


async def test_time_sleep_in_a_processor_stalls_but_does_not_break_other_calls():
    """The same with a real `time.sleep(0.2)` on real sockets and the server's shared pacer."""

    async def sleeps_once(call: Call) -> None:
        assert call.player is not None
        packets = 0
        async for packet in call.packets:
            packets += 1
            if packets == 10 and call.path == "/blocker":
                time.sleep(0.2)  # noqa: ASYNC251  (the fault under test)
            await call.player.play(packet.pcm)  # type: ignore[union-attr]

    audio = b"".join(canary_frame(k) for k in range(50))  # 1 s each
    async with open_gateway(sleeps_once) as server:

        async def one(resource: str) -> None:
            async with simulated_call(server.urls[0], resource=resource) as call:
                await call.stream(audio)
                with trio.fail_after(SAFETY):
                    await call.wait_for_audio(len(audio))
                assert call.received_pcm == audio

        async with trio.open_nursery() as nursery:
            for resource in ("/blocker", "/a", "/b", "/c"):
                nursery.start_soon(one, resource)
    assert server.stats.audio_frames_dropped == 0
    assert server.stats.ended_by == {"hangup": 4}
    assert server.stats.calls_failed == 0


# -- processors --


async def test_a_processor_that_raises_ends_only_its_call_and_is_counted():
    """Wherever a processor fails (before reading, mid-call, in a task of its own nursery, or
    after ACS hung up), its call ends (1011 while ACS is still there), the failure is counted
    in `calls_failed`, and nothing of the call is left."""

    async def faulty(call: Call) -> None:
        where = call.path.strip("/")
        if where == "at-start":
            raise ValueError("fails before reading")
        assert call.player is not None

        async def child() -> None:
            await trio.sleep(0.05)
            raise RuntimeError("a task of the processor's own fails")

        async with trio.open_nursery() as nursery:
            if where == "in-a-child-task":
                nursery.start_soon(child)
            async for packet in call.packets:
                if where == "mid-call":
                    raise KeyError("fails mid-call")
                await call.player.play(packet.pcm)  # type: ignore[union-attr]
        if where == "after-hang-up":
            raise ValueError("fails after ACS hung up")

    async with open_gateway(faulty, hangup_grace=0.5) as server:
        async with canary(server):
            tasks, fds = task_count(), open_fds()
            for where in ("at-start", "in-a-child-task", "mid-call"):
                async with simulated_call(server.urls[0], resource=f"/{where}") as call:
                    await call.send_audio(canary_frame(1))
                    with trio.fail_after(SAFETY):
                        await call.closed.wait()
                    assert call.close_code == 1011
            async with simulated_call(server.urls[0], resource="/after-hang-up") as call:
                await call.send_audio(canary_frame(1))
                with trio.fail_after(SAFETY):
                    await call.wait_for_audio(640)
            await settled(server, tasks, fds)
            assert server.stats.calls_failed == 4
            assert server.stats.ended_by == {"processor_error": 3, "hangup": 1}


def hung_processor(cancelled_at: list[float]) -> Callable[[Call], Awaitable[None]]:
    """A processor that never reads and never returns; notes when it was cancelled."""

    async def hung(call: Call) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    return hung


async def test_a_hung_processor_ends_hangup_grace_after_the_hang_up(autojump_clock):
    """A processor that never reads and never returns: its inbound queue fills (the overflow is
    dropped and counted, the rest counted unread), and ACS's hang-up ends the call exactly
    `hangup_grace` later."""
    cancelled_at: list[float] = []
    hung = hung_processor(cancelled_at)
    tasks = task_count()
    settings = CallSettings(hangup_grace=1.5, inbound_queue_ms=200)  # 10 frames
    async with memory_call(hung, settings) as mc:
        await mc.peer.stream(b"".join(canary_frame(k) for k in range(50)))
        hung_up = trio.current_time()
        await mc.peer.hang_up()
    assert cancelled_at[0] - hung_up == pytest.approx(1.5, abs=1e-6)
    stats = mc.result.stats
    assert mc.result.ended_by == EndReason.HANGUP
    assert (stats.audio_frames_in, stats.audio_frames_dropped, stats.packets_unread) == (50, 40, 10)
    assert task_count() == tasks


async def test_a_hung_processor_on_a_call_that_never_ends_stops_at_max_duration(autojump_clock):
    cancelled_at: list[float] = []
    hung = hung_processor(cancelled_at)
    settings = CallSettings(max_call_duration=5, idle_timeout=1000, inbound_queue_ms=200)
    async with memory_call(hung, settings) as mc:
        start = trio.current_time()
        await _send_at(mc.peer, 50, 60)  # ACS talks for a minute; the call ends first
        assert mc.peer.close_code == 1000
    assert cancelled_at[0] - start == pytest.approx(5, abs=0.05)
    assert mc.result.ended_by == EndReason.MAX_DURATION


async def test_a_stalled_upstream_ends_with_its_call_and_its_socket_is_closed():
    """The processor forwards audio to an upstream service (a model) that accepts and then
    never answers. ACS hangs up; the processor, stuck waiting on the upstream, is cancelled
    after `hangup_grace`, and its `async with` closes the upstream socket (the upstream sees
    EOF). Nothing is left and the canary never noticed."""
    upstream_saw_eof = trio.Event()

    async def stalling_upstream(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):  # takes everything, answers nothing
                pass
            upstream_saw_eof.set()
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as upstream_server:
        (listener,) = await upstream_server.start(
            partial(trio.serve_tcp, stalling_upstream, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]

        async def via_upstream(call: Call) -> None:
            if call.path != "/model":
                await load("echo")(call)
                return
            async with await trio.open_tcp_stream("127.0.0.1", port) as upstream:
                async for packet in call.packets:
                    await upstream.send_all(packet.pcm)  # type: ignore[union-attr]
                    reply = await upstream.receive_some(65536)  # never comes
                    assert call.player is not None
                    await call.player.play(reply)

        async with open_gateway(via_upstream, hangup_grace=0.3) as server:
            async with canary(server):
                tasks, fds = task_count(), open_fds()
                async with simulated_call(server.urls[0], resource="/model") as call:
                    await call.stream(b"".join(canary_frame(k) for k in range(10)))
                with trio.fail_after(SAFETY):
                    await upstream_saw_eof.wait()
                await settled(server, tasks, fds)
                assert call.received_pcm == b""
        upstream_server.cancel_scope.cancel()
    assert server.stats.ended_by == {"hangup": 2}
    assert server.stats.calls_failed == 0
