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

import pytest
import trio

from gateway.call import CallSettings
from gateway.processors import Call
from gateway.testing import open_gateway, simulated_call
from gateway.testing.hostile import UPGRADE, RawPeer, client_frame, encode, metadata_packet
from gateway.testing.peer import acs_headers

from .conftest import memory_call, open_fds, task_count

METADATA = client_frame(encode(metadata_packet()))


def canary_frame(k: int) -> bytes:
    """20 ms of audio that says which frame it is, so a lost or swapped frame shows."""
    return struct.pack("!I", k) * 160


async def settled(server, tasks: int, fds: int, live: int = 1, timeout: float = 10.0) -> None:
    """Wait until only `live` calls remain and the census is back to (tasks, fds)."""
    with trio.fail_after(timeout):
        while server.live > live or task_count() != tasks or open_fds() != fds:  # noqa: ASYNC110
            await trio.sleep(0.01)


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
