"""Pausing the player (a suspected barge-in): stop-audio at once, the unplayed rest kept, ACS's
unplayed buffer taken back, and resume playing on with nothing repeated and nothing missing."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from gateway.call.player import Player, Playout
from gateway.testing.peer import AcsPlayback
from tests.test_player import F16, bounded, check_accounts, frame, frames, sender, sent


def test_pause_takes_back_what_acs_had_not_played():
    p = Playout(16000, lead_ms=60)
    p.enqueue(frames(10), "a")
    assert p.release_due(0.0) == [frame(0), frame(1), frame(2)]  # 60 ms ahead
    p.pause(0.030)  # ACS has played frame 0 and half of frame 1
    assert p.paused and p.take_stop() is True
    assert p.released_ms("a") == pytest.approx(30)  # what the caller heard
    assert p.stats.recalled == F16 + F16 // 2 and p.stats.pauses == 1
    assert p.next_due(0.030) is None and p.release_due(5.0) == []  # nothing while paused
    p.enqueue(frames(1, first=10), "a")  # more audio still queues
    check_accounts(p)
    p.resume()
    out = p.release_due(5.0)
    # the unplayed half of frame 1, then frame 2: exactly where the caller stopped hearing
    assert out == [frame(1)[F16 // 2 :], frame(2), frame(3)]
    while p.queued_bytes:
        out += p.release_due(p.next_due(5.0) or 5.0)
    assert b"".join([frame(0), frame(1)[: F16 // 2], *out]) == frames(11)
    assert p.released_ms("a") == pytest.approx(220)
    check_accounts(p)


def test_pause_on_an_idle_acs_owes_no_stop():
    p = Playout(16000)
    p.enqueue(frames(2), "a")
    p.release_due(0.0)
    p.pause(1.0)  # ACS played everything long ago
    assert p.take_stop() is False and p.stats.recalled == 0
    p.pause(1.0)  # a second pause changes nothing
    assert p.stats.pauses == 1


def test_stop_while_paused_drops_the_kept_audio_and_owes_no_second_stop():
    p = Playout(16000, lead_ms=60)
    p.enqueue(frames(10), "a")
    p.release_due(0.0)
    p.pause(0.010)
    assert p.take_stop() is True
    p.stop()  # the interruption was real
    assert not p.paused and p.queued_bytes == 0
    assert p.take_stop() is False  # ACS stopped at the pause and was sent nothing since
    assert p.released_ms("a") == pytest.approx(10)
    check_accounts(p)


@bounded
async def test_paused_player_sends_stop_keeps_new_audio_and_resumes_seamlessly(autojump_clock):
    player = Player(Playout(16000, lead_ms=60))
    log = []
    acs = AcsPlayback(16000)
    reply = frames(50)
    async with trio.open_nursery() as nursery:

        async def to_acs() -> None:
            while True:
                stop, released = await player.next_release()
                now = trio.current_time()
                if stop:
                    acs.stop(now)
                for f in released:
                    acs.add(now, f)
                log.append((now, stop, released))

        nursery.start_soon(to_acs)
        await player.play(reply[: 20 * F16], "r")
        await trio.sleep(0.205)
        player.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == (0.205, True, [])  # stop-audio at once
        await player.play(reply[20 * F16 :], "r")  # the model's later audio: queued, not played
        await trio.sleep(0.150)  # the suspected interruption turns out false
        assert log[-1][0] == 0.205  # nothing sent while paused
        assert player.released_ms("r") == pytest.approx(205)
        player.resume()
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert acs.heard() == reply  # nothing repeated, nothing missing
    gap = [s.start for s in acs.segments if s.start > 0.205][0]
    assert gap == pytest.approx(0.355)  # played on from the resume
    assert player.released_ms("r") == pytest.approx(1000)
    check_accounts(player.playout)


@bounded
async def test_play_blocked_by_a_full_queue_while_paused_waits_for_resume(autojump_clock):
    player = Player(Playout(16000, lead_ms=60, capacity_ms=100))
    log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        player.pause()
        await player.play(frames(5), "r")  # fills the queue
        done = trio.Event()

        async def more() -> None:
            await player.play(frames(5, first=5), "r")
            done.set()

        nursery.start_soon(more)
        await trio.sleep(1)
        assert not done.is_set()  # back-pressure holds while paused
        player.resume()
        await trio.sleep(1)
        assert done.is_set()
        nursery.cancel_scope.cancel()
    assert sent(log) == [frame(k) for k in range(10)]


def test_randomized_pauses_and_stops_lose_nothing_and_repeat_nothing():
    """Whatever the order of queueing, releasing, pausing, resuming and stopping, what ACS
    plays is exactly the audio accepted, minus what stop() dropped, in order."""
    rng = random.Random(11)
    p = Playout(16000, lead_ms=60)
    acs = AcsPlayback(16000)
    now = 0.0
    expected = bytearray()  # what the caller must end up hearing

    def to_acs(frames: list[bytes]) -> None:
        if p.take_stop():
            acs.stop(now)
        for f in frames:
            acs.add(now, f)

    for _ in range(4000):
        op = rng.random()
        if op < 0.4:
            chunk = rng.randbytes(2 * rng.randrange(0, 700))
            utterance = rng.choice(["a", "b"])
            p.enqueue(chunk, utterance)
            expected += chunk
        elif op < 0.8:
            now += rng.choice([0.0, 0.003, 0.02, 0.05, rng.random() / 10])
            to_acs(p.release_due(now))
        elif op < 0.88:
            p.pause(now)
            to_acs([])
        elif op < 0.96:
            p.resume()
        else:
            p.stop()
            to_acs([])
            expected = bytearray(acs.heard())  # ACS dropped what it had not played
        check_accounts(p)
        assert acs.heard(now) == bytes(expected[: len(acs.heard(now))])
    p.resume()
    p.flush()
    while p.queued_bytes:
        now = max(now, p.next_due(now) or now)
        to_acs(p.release_due(now))
    assert acs.heard() == bytes(expected)
