"""End to end over real sockets on 127.0.0.1, port 0: the server, the simulated ACS peer, real
time. Clips are short so the suite stays fast; timing goals live in bench/, not here."""

from __future__ import annotations

import gc
import logging
import socket

import pybase64
import pytest
import trio
import trio_websocket

from gateway.acs import client
from gateway.processors import Call
from gateway.testing import open_gateway, simulated_call, speech
from gateway.wire.framing import OP_TEXT
from tests.conftest import RAW_MASK, open_fds, raw_acs_stream, task_count

ONE_SECOND_16K = speech(16000)[: 16000 * 2]


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_echo_round_trip_is_byte_exact(rate):
    pcm = speech(rate)[: rate * 2 * 2]  # 2 s of real speech
    async with open_gateway() as server:
        async with simulated_call(server.urls[0], sample_rate=rate) as call:
            await call.stream(pcm)
            with trio.fail_after(5):
                await call.wait_for_audio(len(pcm))
            assert call.received_pcm == pcm
            assert [r.kind for r in call.received] == ["audioData"] * 100


async def test_sixty_concurrent_calls_each_echo_exactly():
    async with open_gateway() as server:
        results: dict[int, bool] = {}

        async def one(i: int) -> None:
            pcm = bytes([i]) * 2 + ONE_SECOND_16K[2:]  # make each call's audio its own
            async with simulated_call(server.urls[0], connection_id=f"c{i}") as call:
                await call.stream(pcm)
                with trio.fail_after(10):
                    await call.wait_for_audio(len(pcm))
                results[i] = call.received_pcm == pcm

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i)
        assert results == {i: True for i in range(60)}
        assert server.stats.audio_frames_dropped == 0
        assert server.stats.calls_accepted == 60


async def test_unmixed_echo_returns_one_participant():
    a, b = speech(16000)[:32000], speech(16000, "interrupt")[:32000]
    async with open_gateway() as server:
        async with simulated_call(server.urls[0]) as call:
            await call.stream({"8:acs:alice": a, "8:acs:bob": b})
            with trio.fail_after(5):
                await call.wait_for_audio(len(a))
            await trio.sleep(0.1)
            assert call.received_pcm == a


def _abrupt(url: str) -> None:
    """Connect, upgrade, send metadata and half a frame, then reset the TCP connection."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(client.upgrade_request("x", "/", ())[0])
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    sock.sendall(client.masked_frame(OP_TEXT, b"x" * 1024, RAW_MASK)[:108])  # a 1 KB frame, cut
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST


async def test_abrupt_disconnects_do_not_disturb_a_good_call():
    async with open_gateway() as server:
        async with simulated_call(server.urls[0]) as call:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.stream, ONE_SECOND_16K)
                for _ in range(10):
                    await trio.to_thread.run_sync(_abrupt, server.urls[0])
            with trio.fail_after(5):
                await call.wait_for_audio(len(ONE_SECOND_16K))
            assert call.received_pcm == ONE_SECOND_16K
        with trio.fail_after(5):
            while server.live:  # noqa: ASYNC110  (a counter polled under fail_after; no event)
                await trio.sleep(0.01)
        assert server.stats.calls_failed == 0


async def test_every_malformed_input_while_a_good_call_keeps_working():
    hostile = [
        "not json",
        b"\xff\xfe\xfd",
        "[]",
        "{}",
        '{"kind":"AudioData"}',
        '{"kind":"AudioData","audioData":{"data":"!!!"}}',
        '{"kind":"AudioData","audioData":{"data":"AA=="}}',
        '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":"fast"}}',
        '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":8001}}',
        '{"kind":"DtmfData","dtmfData":{}}',
        '{"kind":"TranscriptionData","transcriptionData":{"words":7}}',
        "x" * 200_000,  # over max_message_bytes: closes that call with 1009
    ]
    async with open_gateway() as server:
        async with simulated_call(server.urls[0]) as good:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good.stream, ONE_SECOND_16K)
                for message in hostile:
                    async with simulated_call(server.urls[0]) as bad:
                        await bad.send_raw(message)
                        if len(message) > 65536:
                            with trio.fail_after(5):
                                await bad.closed.wait()
                            assert bad.close_code == 1009
                        else:
                            await bad.stream(bytes(640 * 2), realtime=False)
                            with trio.fail_after(5):
                                await bad.wait_for_audio(640 * 2)
            with trio.fail_after(5):
                await good.wait_for_audio(len(ONE_SECOND_16K))
            assert good.received_pcm == ONE_SECOND_16K
    assert server.stats.calls_failed == 0
    assert sum(server.stats.protocol_errors.values()) == len(hostile) - 1


async def test_calls_past_the_limit_are_refused_before_the_upgrade():
    async with open_gateway(max_calls=2) as server:
        async with simulated_call(server.urls[0]), simulated_call(server.urls[0]):
            with pytest.raises(trio_websocket.HandshakeError) as refused:
                async with simulated_call(server.urls[0]):
                    pass
            assert refused.value.status_code == 503  # type: ignore[attr-defined]
        assert server.stats.calls_refused == 1
        async with simulated_call(server.urls[0]) as call:  # room again
            await call.stream(bytes(640), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)


async def test_a_stalled_handshake_is_dropped_after_the_timeout():
    async with open_gateway(handshake_timeout=0.3) as server:
        host, port = server.urls[0].removeprefix("ws://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET / HTTP/1.1\r\n")  # and then nothing
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""  # closed by the server
        await stream.aclose()
        assert server.stats.handshakes_failed == 1


async def test_plain_http_gets_an_error_not_a_crash():
    async with open_gateway() as server:
        host, port = server.urls[0].removeprefix("ws://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(3):
            reply = await stream.receive_some(1000)
        assert reply.startswith(b"HTTP/1.1 4")
        await stream.aclose()
        async with simulated_call(server.urls[0]) as call:
            await call.stream(bytes(640), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)


async def test_handshake_headers_tag_every_call_log_line(caplog):
    caplog.set_level(logging.INFO)
    async with open_gateway() as server:
        async with simulated_call(
            server.urls[0],
            connection_id="401f3500-conn",
            correlation_id="ebd8-corr",
            resource="/ws/any/path?x=1",
        ) as call:
            await call.stream(bytes(640 * 3), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640 * 3)
    lines = [r for r in caplog.records if r.name == "gateway.call"]
    assert any("/ws/any/path?x=1" in r.getMessage() for r in lines)
    assert lines and {(r.call_connection_id, r.call_correlation_id) for r in lines} == {
        ("401f3500-conn", "ebd8-corr")
    }


async def test_many_calls_leave_no_tasks_or_sockets_behind():
    async with open_gateway() as server:
        async with simulated_call(server.urls[0]) as warm:  # first-use allocations
            await warm.stream(bytes(640), realtime=False)
        await trio.sleep(0.05)
        gc.collect()  # close what earlier tests left to the collector, not inside our window
        tasks, fds = task_count(), open_fds()

        async def one(i: int) -> None:
            async with simulated_call(server.urls[0]) as call:
                await call.stream(bytes(640 * 5), realtime=False)
                with trio.fail_after(5):
                    await call.wait_for_audio(640 * 5)

        for _ in range(3):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
        with trio.fail_after(5):
            while server.live:  # noqa: ASYNC110  (a counter polled under fail_after; no event)
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert task_count() == tasks
        assert open_fds() == fds
        assert server.stats.calls_accepted == 121


async def test_processor_hang_up_and_failure_stay_in_their_call():
    async def picky(call: Call) -> None:
        if call.path.startswith("/fail"):
            raise ValueError("this call's processor fails")
        if call.path.startswith("/bye"):
            return
        async for packet in call.packets:
            assert call.player is not None
            if hasattr(packet, "pcm"):
                await call.player.play(packet.pcm)

    async with open_gateway(picky) as server:
        async with simulated_call(server.urls[0]) as good:
            async with simulated_call(server.urls[0], resource="/fail") as failing:
                with trio.fail_after(5):
                    await failing.closed.wait()
                assert failing.close_code == 1011
            async with simulated_call(server.urls[0], resource="/bye") as ended:
                with trio.fail_after(5):
                    await ended.closed.wait()
                assert ended.close_code == 1000
            await good.stream(bytes(640 * 10), realtime=False)
            with trio.fail_after(5):
                await good.wait_for_audio(640 * 10)
    assert server.stats.calls_failed == 1


async def test_a_peer_that_stops_reading_still_gets_every_byte_in_order():
    """The player's direct path meets a full kernel buffer: what the socket does not take goes
    through the send task, in order, once the peer reads again."""
    audio = bytes(range(256)) * 1250 * 3  # 30 s at 16 kHz, released at once (lead 60 s)

    async def talker(call: Call) -> None:
        assert call.player is not None
        await trio.sleep(0.05)  # let the send task go idle, so play() takes the direct path
        await call.player.play(audio)
        await call.player.drain()
        await trio.sleep_forever()

    async with open_gateway(talker, playout_lead_ms=60_000, playout_queue_ms=60_000) as server:
        stream = await raw_acs_stream(server.urls[0])
        await trio.sleep(0.5)  # not reading: the gateway's writes fill the kernel buffers
        buffer = bytearray()
        frames = client.ServerFrames()
        received = bytearray()
        with trio.fail_after(20):
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive_some(1 << 16)
            assert buffer.startswith(b"HTTP/1.1 101")
            data = bytes(buffer[buffer.index(b"\r\n\r\n") + 4 :])
            while True:
                for message in frames.receive(data):
                    kind, b64 = client.classify(message)
                    assert kind == client.AUDIO
                    received += pybase64.b64decode(b64)
                if len(received) >= len(audio):
                    break
                data = await stream.receive_some(1 << 16)
        assert bytes(received) == audio
        await stream.aclose()
