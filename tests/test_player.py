"""The player: the sans-IO playout clock (exact arithmetic) and the async Player on the autojump
clock (exact release times, lead window, stop, back-pressure, wake-ups)."""

from __future__ import annotations

import random

import pytest
import trio

from gateway.pacer import Pacer
from gateway.player import Player, Playout

FRAME = 640  # 20 ms at 16 kHz


def frame(n: int) -> bytes:
    return bytes([n % 256]) * FRAME


# -- Playout (sans-IO) --


def test_whole_frames_go_out_three_at_once_then_one_every_20_ms():
    p = Playout(16000, lead_ms=60)
    for k in range(10):
        p.enqueue(frame(k))
    assert p.release_due(0.0) == [frame(0), frame(1), frame(2)]  # 60 ms: the whole lead
    assert p.next_due(0.0) == pytest.approx(0.020)  # when frame 3 would end at now + lead
    assert p.release_due(0.0199) == []
    assert p.release_due(0.020) == [frame(3)]
    assert p.next_due(0.020) == pytest.approx(0.040)
    assert p.release_due(0.040) == [frame(4)]
    assert p.released_ms() == pytest.approx(100)


@pytest.mark.parametrize(("rate", "size"), [(16000, 640), (24000, 960)])
def test_odd_sized_chunks_become_exact_frames(rate, size):
    p = Playout(rate, lead_ms=1000)
    audio = bytes(random.Random(1).randrange(256) for _ in range(size * 5))
    pieces = [audio[i : i + 42] for i in range(0, len(audio), 42)]  # 42 bytes: 1.3 ms pieces
    for piece in pieces:
        p.enqueue(piece)
    out = p.release_due(0.0)
    assert [len(f) for f in out] == [size] * 5
    assert b"".join(out) == audio


def test_a_partial_frame_waits_for_more_of_its_utterance():
    p = Playout(16000, lead_ms=60)
    p.enqueue(bytes(2 * FRAME + 100), "a")
    assert [len(f) for f in p.release_due(0.0)] == [FRAME, FRAME]
    # the 100-byte remainder is held until ACS is about to run dry (one frame left)
    assert p.next_due(0.0) == pytest.approx(0.020)
    p.enqueue(bytes(FRAME - 100), "a")  # completes the frame, which is then due normally
    assert [len(f) for f in p.release_due(0.0)] == [FRAME]


def test_the_remainder_goes_when_acs_would_run_dry_or_on_flush():
    p = Playout(16000, lead_ms=60)
    p.enqueue(bytes(FRAME * 2 + 64))
    assert [len(f) for f in p.release_due(0.0)] == [FRAME, FRAME]
    assert p.release_due(0.0) == []  # 40 ms with ACS: the 2 ms remainder waits
    assert [len(f) for f in p.release_due(0.020)] == [64]  # 20 ms left: send it
    p.enqueue(bytes(100))
    p.flush()
    assert [len(f) for f in p.release_due(0.020)] == [100]


def test_a_new_utterance_flushes_the_previous_tail():
    p = Playout(16000, lead_ms=200)
    p.enqueue(bytes(100), "reply-1")
    p.enqueue(bytes(FRAME), "reply-2")
    assert [len(f) for f in p.release_due(0.0)] == [100, FRAME]
    assert p.released_ms("reply-1") == pytest.approx(100 / 32)
    assert p.released_ms("reply-2") == pytest.approx(20)


def test_after_an_underrun_the_clock_restarts_at_now():
    p = Playout(16000, lead_ms=60)
    p.enqueue(frame(0))
    p.release_due(0.0)
    assert p.position == pytest.approx(0.020)
    p.enqueue(frame(1))
    p.release_due(5.0)  # ACS has been idle for ~5 s
    assert p.position == pytest.approx(5.020)


def test_stop_drops_everything_counts_it_and_is_reported_once():
    p = Playout(16000, lead_ms=60)
    p.enqueue(bytes(FRAME * 10 + 10))
    p.release_due(0.0)
    p.stop()
    assert p.stats.dropped_by_stop == FRAME * 7 + 10
    assert p.queued_bytes == 0 and p.position is None
    assert p.take_stop() is True and p.take_stop() is False
    p.enqueue(frame(9))
    assert p.release_due(0.001) == [frame(9)]


def test_odd_length_pcm_is_refused():
    with pytest.raises(ValueError):
        Playout(16000).enqueue(b"\x00\x01\x02")


def test_randomized_operations_never_lose_audio_uncounted():
    rng = random.Random(7)
    p = Playout(16000, lead_ms=60)
    now = 0.0
    accepted = bytearray()
    released = bytearray()
    dropped = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            chunk = bytes(rng.randrange(256) for _ in range(2 * rng.randrange(0, 800)))
            p.enqueue(chunk, rng.choice(["a", "b"]))
            accepted += chunk
        elif op < 0.85:
            now += rng.choice([0.0, 0.001, 0.02, 0.05])
            for f in p.release_due(now):
                released += f
        elif op < 0.95:
            p.flush()
        else:
            dropped += p.queued_bytes
            p.stop()
            p.take_stop()
            accepted = released[:]  # what was dropped never goes out: restart the comparison
        s = p.stats
        assert s.accepted == s.released + s.dropped_by_stop + p.queued_bytes
        assert s.dropped_by_stop == dropped
    p.flush()
    while p.queued_bytes:  # drain at real-time pace
        now += 0.020
        for f in p.release_due(now):
            released += f
    assert bytes(released) == bytes(accepted)


# -- Player (async, autojump clock) --


async def _record(player: Player, log: list) -> None:
    while True:
        stop, frames = await player.next_release()
        log.append((trio.current_time(), stop, frames))


@pytest.mark.parametrize("use_pacer", [False, True])
async def test_release_times_are_exact_and_never_drift(autojump_clock, use_pacer):
    async with trio.open_nursery() as nursery:
        pacer = None
        if use_pacer:
            pacer = Pacer()
            await nursery.start(pacer.run)
        player = Player(Playout(16000, lead_ms=60, capacity_ms=300_000), pacer=pacer)
        log: list = []
        nursery.start_soon(_record, player, log)
        start = trio.current_time()
        await player.play(bytes(FRAME * 10_000))  # 200 s of audio at once
        await player.drain()
        times = [t - start for t, _, frames in log for _ in frames]
        assert len(times) == 10_000
        assert times[:3] == [0.0, 0.0, 0.0]
        slack = 0.0011 if use_pacer else 1e-9  # the pacer may serve a wake up to 1 ms late
        for k in (3, 4, 100, 9_999):
            assert times[k] == pytest.approx((k - 2) * 0.020, abs=slack)
            assert times[k] >= (k - 2) * 0.020 - 1e-9
        nursery.cancel_scope.cancel()


async def test_play_blocks_when_the_queue_is_full(autojump_clock):
    player = Player(Playout(16000, lead_ms=60, capacity_ms=200))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, player, [])
        start = trio.current_time()
        await player.play(bytes(FRAME * 50))  # 1 s into a 200 ms queue
        # returns once the last 200 ms fit: 1 s - 0.2 s queued - 60 ms lead, released at
        # one frame per 20 ms after the first three
        assert trio.current_time() - start == pytest.approx(0.740, abs=1e-9)
        assert player.queued_ms == pytest.approx(200)
        nursery.cancel_scope.cancel()


async def test_stop_while_play_is_blocked_cuts_the_rest(autojump_clock):
    player = Player(Playout(16000, lead_ms=60, capacity_ms=200))
    log: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, player, log)

        async def speak() -> None:
            await player.play(frame(1) * 50, "old")
            returned.append(trio.current_time())

        returned: list[float] = []
        nursery.start_soon(speak)
        await trio.sleep(0.1)
        stopped = trio.current_time()
        player.stop()
        await trio.sleep(0)
        await trio.sleep(0)
        assert returned == [stopped]  # play() returned at once
        await player.play(frame(2), "new")
        await trio.sleep(1)
        stop_at = [t for t, stop, _ in log if stop]
        assert stop_at == [stopped]
        at = next(i for i, (_, stop, _) in enumerate(log) if stop)
        after = [f for _, _, frames in log[at:] for f in frames]  # in send order
        assert after == [frame(2)]  # nothing of the old utterance after the stop
        s = player.playout.stats
        assert s.accepted == s.released + s.dropped_by_stop
        assert s.discarded == FRAME * 50 - (s.accepted - FRAME)  # less the "new" frame
        assert player.released_ms("old") == pytest.approx(
            20 * sum(1 for _, _, frames in log[:at] for _ in frames)
        )
        nursery.cancel_scope.cancel()


async def test_an_idle_player_sends_at_once(autojump_clock):
    player = Player(Playout(16000))
    log: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, player, log)
        await trio.sleep(3)
        t = trio.current_time()
        await player.play(frame(5))
        await trio.sleep(0.001)
        assert log == [(t, False, [frame(5)])]
        nursery.cancel_scope.cancel()


async def test_play_with_a_backlog_does_not_wake_the_sender(autojump_clock):
    """One wake-up per released frame: audio queued behind a backlog does not wake the sender
    early (it would find nothing due)."""
    player = Player(Playout(16000, lead_ms=60, capacity_ms=10_000))
    wakes = 0

    async def counting_sender() -> None:
        nonlocal wakes
        while True:
            await player.next_release()
            wakes += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(counting_sender)
        await player.play(bytes(FRAME * 10))
        for _ in range(10):
            await player.play(bytes(FRAME))
        await player.drain()
        # 1 wake for the first three frames, then one per remaining frame (17)
        assert wakes == 1 + 17
        nursery.cancel_scope.cancel()


async def test_after_close_play_returns_at_once_and_counts(autojump_clock):
    player = Player(Playout(16000, capacity_ms=40))
    player.close()
    await player.play(bytes(FRAME * 100))
    assert player.playout.stats.discarded == FRAME * 100
    assert player.playout.stats.accepted == 0
