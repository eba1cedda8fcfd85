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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from gateway.call import CallSettings
from gateway.packets import AudioData
from gateway.processors import Call, load
from gateway.server import Server
from gateway.testing import open_gateway, simulated_call
from gateway.testing.hostile import (
    UPGRADE,
    RawPeer,
    client_frame,
    encode,
    good_connection,
    keep_talking,
    metadata_packet,
)
from gateway.testing.peer import SimulatedCall

from .conftest import memory_call, open_fds, task_count
from .test_fuzz_live import _run_hostile

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
        tasks, fds = task_count(), open_fds()
        gc.collect()
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
