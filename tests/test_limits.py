"""Limits: everything a peer can make the gateway hold is bounded (docs/security.md, "Bad input
policy")."""

from __future__ import annotations

import ipaddress

import pytest
import trio
import trio.testing
import trio_websocket

from gateway import config
from gateway.call import CallSettings, EndReason
from gateway.call.limits import FloodGate
from gateway.errors import ConfigError
from gateway.processors import Call, load
from gateway.server.admission import in_networks
from gateway.testing import open_gateway, simulated_call, speech
from gateway.testing.peer import SimulatedCall
from tests.conftest import memory_call, raw_acs_stream

FRAME = bytes(640)  # 20 ms of silence at 16 kHz


# -- the flood gate (sans-IO) --


def test_the_gate_takes_a_second_of_burst_then_the_rate():
    gate = FloodGate(rate=50, grace=3, now=0.0)
    assert gate.admit(50, 0.0) == 50  # a second's worth at once: a catch-up burst is fine
    assert gate.admit(1, 0.0) == 0
    assert gate.dropped == 1
    assert gate.admit(10, 0.1) == 5  # refills at the rate
    assert gate.dropped == 6
    assert gate.admit(100, 100.0) == 50  # never holds more than one second's worth


def test_a_flood_is_persistent_after_the_grace_and_ends_after_a_quiet_second():
    gate = FloodGate(rate=10, grace=3, now=0.0)
    t = 0.0
    while t < 2.9:  # 100 messages a second against a rate of 10
        gate.admit(10, t)
        t += 0.1
    assert not gate.persistent(t)
    gate.admit(10, 3.2)
    assert gate.persistent(3.2)
    # the peer calms down: after a quiet second the flood is over, and a new one starts afresh
    assert gate.admit(1, 4.3) == 1
    assert not gate.persistent(4.3)
    gate.admit(100, 4.4)
    assert gate.flood_started == 4.4
    assert not gate.persistent(4.5)


# -- call limits (memory streams, autojump clock) --


async def _send_at(call: SimulatedCall, rate: float, seconds: float) -> int:
    """Send silent frames at `rate` a second for `seconds` (or until the gateway closes);
    returns how many were sent."""
    start = trio.current_time()
    sent = 0
    try:
        while sent < rate * seconds and not call.closed.is_set():
            await trio.sleep_until(start + sent / rate)
            await call.send_audio(FRAME)
            sent += 1
    except trio_websocket.ConnectionClosed:
        pass
    return sent


async def test_a_short_flood_is_dropped_and_counted_but_the_call_goes_on(autojump_clock):
    settings = CallSettings(max_frames_per_second=50, flood_grace=2)
    async with memory_call("echo", settings) as mc:
        flood = await _send_at(mc.peer, 200, 0.5)
        calm = await _send_at(mc.peer, 25, 2)
        await trio.sleep(1)
        assert not mc.peer.closed.is_set()
    stats = mc.result.stats
    assert mc.result.ended_by == EndReason.HANGUP
    assert 0 < stats.frames_flood_dropped < flood
    # every frame is either taken or counted as dropped: nothing vanishes
    assert stats.audio_frames_in + stats.frames_flood_dropped == flood + calm
    assert len(mc.peer.received_pcm) == stats.audio_frames_in * len(FRAME)


async def test_a_persistent_flood_closes_the_call_with_1008(autojump_clock):
    settings = CallSettings(max_frames_per_second=50, flood_grace=2)
    async with memory_call("echo", settings) as mc:
        start = trio.current_time()
        await _send_at(mc.peer, 200, 10)
        with trio.fail_after(5):
            await mc.peer.closed.wait()
        closed_after = trio.current_time() - start
    assert mc.peer.close_code == 1008
    assert mc.result.ended_by == EndReason.FLOOD
    assert mc.result.close_code == 1008
    # the first drop comes once the one-second bucket is spent (~0.33 s), then the grace
    assert 2.3 <= closed_after <= 2.5
    assert mc.result.stats.frames_flood_dropped > 0


async def test_a_flood_before_the_metadata_is_bounded_too(autojump_clock):
    settings = CallSettings(max_frames_per_second=50, flood_grace=1, metadata_timeout=10)
    async with memory_call("echo", settings, send_metadata=False) as mc:
        try:
            for _ in range(2000):  # DTMF would otherwise wait in memory for the metadata
                await mc.peer.send_dtmf("1")
                await trio.sleep(0.001)
        except trio_websocket.ConnectionClosed:
            pass
        with trio.fail_after(5):
            await mc.peer.closed.wait()
    assert mc.result.ended_by == EndReason.FLOOD
    assert mc.peer.close_code == 1008


async def test_a_call_without_inbound_audio_is_closed_after_the_idle_timeout(autojump_clock):
    settings = CallSettings(idle_timeout=5, max_call_duration=1000)
    async with memory_call("echo", settings) as mc:
        await mc.peer.stream(FRAME * 400)  # 8 s of audio: longer than the idle timeout
        assert not mc.peer.closed.is_set()
        last_audio = trio.current_time()
        with trio.fail_after(10):
            await mc.peer.closed.wait()
        assert trio.current_time() - last_audio == pytest.approx(5, abs=0.05)
    assert mc.result.ended_by == EndReason.IDLE
    assert mc.peer.close_code == 1000
    assert len(mc.peer.received_pcm) == 400 * len(FRAME)  # everything was echoed first


async def test_a_call_is_closed_at_the_maximum_duration(autojump_clock):
    settings = CallSettings(idle_timeout=1000, max_call_duration=3)
    async with memory_call("echo", settings) as mc:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_at, mc.peer, 50, 10)
            with trio.fail_after(10):
                await mc.peer.closed.wait()
        assert trio.current_time() - start == pytest.approx(3, abs=0.05)
    assert mc.result.ended_by == EndReason.MAX_DURATION
    assert mc.peer.close_code == 1000


class StallingStream(trio.abc.Stream):
    """The ACS end of a stream pair that can stop reading (a stuck peer); sends still work."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.stalled = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.stalled:
            await trio.sleep_forever()
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_peer_that_stops_reading_loses_its_call_and_no_other(autojump_clock):
    """Lockstep streams have no buffer: a write completes only when the peer reads it, so the
    stalled peer blocks the gateway's very next write."""
    stalling: list[StallingStream] = []

    def stalling_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.lockstep_stream_pair()
        stalling.append(StallingStream(client))
        return stalling[-1], server

    audio = speech(16000)[: 16000 * 2 * 4]  # 4 s: whole frames
    echo = load("echo")
    ended_at: list[float] = []

    async def echo_noting_the_end(call: Call) -> None:
        try:
            await echo(call)
        finally:
            ended_at.append(trio.current_time())

    async with memory_call(echo_noting_the_end, stream_pair=stalling_pair, send_timeout=2) as stuck:
        async with memory_call(
            "echo", stream_pair=trio.testing.lockstep_stream_pair, send_timeout=2
        ) as good:
            await stuck.peer.stream(FRAME * 5)
            with trio.fail_after(5):
                await stuck.peer.wait_for_audio(5 * len(FRAME))
            stalling[0].stalled = True
            stalled_at = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_at, stuck.peer, 50, 10)
                await good.peer.stream(audio)
                with trio.fail_after(5):
                    await good.peer.wait_for_audio(len(audio))
                assert ended_at, "the stuck call is still running"
                nursery.cancel_scope.cancel()
            assert good.peer.received_pcm == audio
            assert not good.peer.closed.is_set()
    assert stuck.result.ended_by == EndReason.SEND_TIMEOUT
    assert good.result.ended_by == EndReason.HANGUP
    # the first echo after the stall blocked within a frame; it gave up send_timeout later
    assert 2.0 <= ended_at[0] - stalled_at <= 2.05


# -- admission (real sockets on 127.0.0.1) --


async def test_calls_from_one_address_past_the_limit_get_429():
    async with open_gateway(max_calls_per_source=2) as server:
        async with simulated_call(server.urls[0]), simulated_call(server.urls[0]):
            with pytest.raises(trio_websocket.HandshakeError) as refused:
                async with simulated_call(server.urls[0]):
                    pass
            assert refused.value.status_code == 429  # type: ignore[attr-defined]
            assert server.reserved_by_source == {"127.0.0.1": 2}
        with trio.fail_after(5):
            while server.live:  # noqa: ASYNC110 (the server has no "a call ended" event)
                await trio.sleep(0.01)
        assert not server.reserved_by_source  # no entry left behind per address
        async with simulated_call(server.urls[0]) as call:  # room again
            await call.stream(FRAME, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(FRAME))
    assert server.stats.refused_by == {"max_calls_per_source": 1}
    assert server.stats.calls_refused == 1


async def test_sources_outside_the_allowed_networks_get_403():
    async with open_gateway(allowed_networks=("52.112.0.0/14", "2603:1063::/38")) as server:
        with pytest.raises(trio_websocket.HandshakeError) as refused:
            async with simulated_call(server.urls[0]):
                pass
        assert refused.value.status_code == 403  # type: ignore[attr-defined]
    assert server.stats.refused_by == {"network": 1}
    async with open_gateway(allowed_networks=("127.0.0.0/8",)) as server:
        async with simulated_call(server.urls[0]) as call:
            await call.stream(FRAME, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(FRAME))
    assert server.stats.calls_refused == 0


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("52.113.1.2", True),
        ("::ffff:52.113.1.2", True),  # an IPv4 peer on a dual-stack listener
        ("2603:1063::1", True),
        ("52.116.0.1", False),
        ("2603:1064::1", False),
        ("-", False),  # no address at all
    ],
)
def test_allow_list_matching(source, allowed):
    networks = tuple(ipaddress.ip_network(n) for n in ("52.112.0.0/14", "2603:1063::/38"))
    assert in_networks(source, networks) is allowed


async def test_a_stuck_peer_on_a_real_socket_is_reset_and_the_other_call_goes_on():
    audio = bytes(range(256)) * 125 * 240  # 120 s at 16 kHz: more than the kernel buffers hold
    one_second = speech(16000)[:32000]

    async def talker(call: Call) -> None:
        if call.path != "/stuck":
            await load("echo")(call)
            return
        assert call.player is not None
        await call.player.play(audio)
        await trio.sleep_forever()

    async with open_gateway(
        talker, playout_lead_ms=200_000, playout_queue_ms=200_000, send_timeout=0.5
    ) as server:
        stuck = await raw_acs_stream(server.urls[0], "/stuck")
        async with simulated_call(server.urls[0]) as good:  # and never read `stuck`
            await good.stream(one_second)
            with trio.fail_after(10):
                while not server.stats.ended_by["send_timeout"]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            await good.stream(one_second)
            with trio.fail_after(5):
                await good.wait_for_audio(2 * len(one_second))
            assert good.received_pcm == 2 * one_second
        # the stuck peer's connection was reset, not left to drain what it would not read
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
            while await stuck.receive_some(1 << 20):
                pass
        await stuck.aclose()
    assert server.stats.ended_by["send_timeout"] == 1
    assert server.stats.calls_failed == 0


def test_allowed_networks_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('allowed_networks = ["52.112.0.0/14", "2603:1063::/38"]\n')
    assert config.load(path, environ={}).allowed_networks == ("52.112.0.0/14", "2603:1063::/38")
    environ = {"ACS_GATEWAY_ALLOWED_NETWORKS": "52.112.0.0/14, 52.122.0.0/15"}
    assert config.load(environ=environ).allowed_networks == ("52.112.0.0/14", "52.122.0.0/15")
    with pytest.raises(ConfigError, match=r"allowed_networks \(environment .* = '52.112.0.0/33'"):
        config.load(environ={"ACS_GATEWAY_ALLOWED_NETWORKS": "52.112.0.0/33"})


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://acscallautomation.communication.azure.com/calling/keys", True),
        ("http://127.0.0.1:8000/keys", True),
        ("http://localhost/keys", True),
        ("http://keys.example.com/keys", False),  # plain http over a network
        ("ftp://127.0.0.1/keys", False),
    ],
)
def test_the_key_set_url_must_be_https_unless_on_loopback(url, ok):
    environ = {"ACS_GATEWAY_AUTH_KEY_SET_URL": url}
    if ok:
        assert config.load(environ=environ).auth_key_set_url == url
    else:
        with pytest.raises(ConfigError, match="auth_key_set_url"):
            config.load(environ=environ)


async def test_a_ping_flood_counts_as_a_flood():
    """Pings are answered by the WebSocket itself (one pong per read), but they spend the
    call's budget like any message, so a peer cannot flood with pings instead."""
    async with open_gateway(max_frames_per_second=50, flood_grace=1) as server:
        stream = await raw_acs_stream(server.urls[0])
        pings = (bytes((0x89, 0x84)) + b"\0\0\0\0" + b"ping") * 10  # masked with a zero key
        close_code: list[int] = []

        async def read_until_close() -> None:
            buffer = bytearray()
            while not close_code:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                buffer += data
                if b"\r\n\r\n" in buffer and buffer.startswith(b"HTTP/1.1 101"):
                    del buffer[: buffer.index(b"\r\n\r\n") + 4]
                while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
                    opcode, n = buffer[0] & 0x0F, buffer[1] & 0x7F
                    if opcode == 0x8:
                        close_code.append(int.from_bytes(buffer[2:4], "big"))
                    del buffer[: 2 + n]

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_until_close)
                try:
                    while not close_code:
                        await stream.send_all(pings)
                        await trio.sleep(0.01)
                except trio.BrokenResourceError:
                    pass
            await stream.send_all(bytes((0x88, 0x82)) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))
            while await stream.receive_some(1 << 16):  # until the gateway closes the socket
                pass
            while server.live:  # noqa: ASYNC110 (the server has no "a call ended" event)
                await trio.sleep(0.01)
        await stream.aclose()
    assert close_code == [1008]
    assert server.stats.ended_by["flood"] == 1
