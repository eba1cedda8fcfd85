"""Paced audio written by the pacer itself: when a call's deadline passes and its socket can
take the frames at once (`DirectSink.ready()`), the shared pacer writes them and the call's
send task sleeps on; otherwise the send task is woken as before. On the autojump clock, with a
fake sink that records when each frame was written. Catching up is off: the lead alone paces.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from pytest import approx

from gateway.call.observer import NoObserver
from gateway.call.pacer import EARLY, SLACK, Pacer
from gateway.call.player import Player, Playout

F16 = 640  # bytes in 20 ms at 16 kHz


def frames(n: int) -> bytes:
    return b"".join((k % 65536).to_bytes(2, "little") * (F16 // 2) for k in range(n))


class FakeSink:
    """A socket that takes everything at once, unless told otherwise."""

    def __init__(self) -> None:
        self.written: list[tuple[float, bytes]] = []
        self.stops: list[float] = []  # when stop-audio was written
        self.busy = False  # ready() is False: a write is in progress
        self.short = False  # send() leaves bytes for the send task
        self.asked = 0  # ready() calls
        self.writes: list[int] = []  # frames in each send()
        self.max_asked = 10_000  # more: the player spins (the autojump clock would not move)

    def ready(self) -> bool:
        self.asked += 1
        assert self.asked <= self.max_asked, "asked again and again: the player spins"
        return not self.busy

    def send(self, frames: list[bytes]) -> bool:
        now = trio.current_time()
        self.written += [(now, f) for f in frames]
        self.writes.append(len(frames))
        return not self.short

    def send_stop(self) -> bool:
        self.stops.append(trio.current_time())
        return not self.short


class Sends:
    """The call's send task: what it sends, and how often it woke for anything."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bool, list[bytes]]] = []
        self.returns = 0

    async def run(self, player: Player) -> None:
        while True:
            stop, released = await player.next_release()
            self.returns += 1
            self.sent.append((trio.current_time(), stop, released))


@asynccontextmanager
async def paced_call(
    sink: FakeSink, sends: Sends, step_ms: int = 20, **player: Any
) -> AsyncIterator[tuple[trio.Nursery, Player]]:
    """A pacer, a player writing to `sink` (the lead alone paces) and its send task, parked
    waiting for audio; cancelled on exit."""
    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        playout = Playout(16000, lead_ms=60, catchup_ms=0, step_ms=step_ms)
        call = Player(playout, pacer=pacer, direct=sink, **player)
        nursery.start_soon(sends.run, call)
        await trio.sleep(0.001)
        yield nursery, call
        nursery.cancel_scope.cancel()


async def test_a_long_reply_goes_out_from_the_pacer_on_time_and_the_send_task_sleeps(
    autojump_clock,
):
    late: list[float] = []
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends, on_late=late.append) as (_, player):
        t0 = trio.current_time()
        await player.play(frames(100))  # 2 s at once: three frames now, then one per 20 ms
        await player.drain()
    times = [t - t0 for t, _ in sink.written]
    audio = frames(100)
    assert [f for _, f in sink.written] == [audio[k * F16 : (k + 1) * F16] for k in range(100)]
    for k, t in enumerate(times):
        exact = max(0, k - 2) * 0.020
        assert exact - 1e-9 <= t <= exact + SLACK + 1e-9  # never early, at most SLACK late
    assert sends.returns == 0  # every frame went from play() or the pacer: no send-task wake
    assert len(late) == 97 and max(late) <= SLACK + 1e-9  # each paced release's lateness
    assert player.playout.stats.released == 100 * F16


async def test_a_step_of_two_frames_writes_them_in_pairs_on_the_same_playout_clock(
    autojump_clock,
):
    """`step_ms=40`: the pacer wakes when ACS holds 20 ms (the lead less the step) and tops it
    up to the lead: two frames a write, half the wake-ups. What ACS plays, and when, is what
    a step of one frame gives."""
    late: list[float] = []
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends, step_ms=40, on_late=late.append) as (_, player):
        t0 = trio.current_time()
        await player.play(frames(100))
        await player.drain()
        assert player.playout.position == approx(t0 + 2.0)  # the clock ends where it would
    audio = frames(100)
    assert [f for _, f in sink.written] == [audio[k * F16 : (k + 1) * F16] for k in range(100)]
    assert sink.writes == [3] + [2] * 48 + [1]  # the lead at once, then pairs
    for k, (t, _) in enumerate(sink.written):
        written = t - t0
        exact = math.ceil(max(0, k - 2) / 2) * 0.040  # when ACS holds 20 ms
        assert exact - 1e-9 <= written <= exact + SLACK + 1e-9
        plays_at = k * 0.020  # the playout clock: the frame's start in ACS
        if k >= 3:  # after the first lead: ACS had at least 20 ms still to play
            assert plays_at - written >= 0.020 - SLACK - 1e-9
        assert plays_at - written <= 0.040 + 1e-9  # and was topped up to the lead
    assert sends.returns == 0
    assert len(late) == 49 and max(late) <= SLACK + 1e-9  # a step of one frame: 97


@pytest.mark.parametrize("step_ms", [20, 40])
async def test_a_busy_socket_wakes_the_send_task_instead(autojump_clock, step_ms):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends, step_ms=step_ms) as (_, player):
        t0 = trio.current_time()
        await player.play(frames(10))  # three frames go from play() itself
        sink.busy = True  # from now on, only the send task may write
        await player.drain()
    assert len(sink.written) == 3
    by_task = [(t - t0, f) for t, _, released in sends.sent for f in released]
    assert [f for _, f in by_task] == [frames(10)[k * F16 : (k + 1) * F16] for k in range(3, 10)]
    step = step_ms // 20  # frames a wake-up of the send task takes
    expected = [step] * (7 // step) + ([7 % step] if 7 % step else [])
    assert [len(released) for _, _, released in sends.sent] == expected
    for k, (t, _) in enumerate(by_task, start=3):
        exact = math.ceil((k - 2) / step) * step * 0.020
        assert exact - 1e-9 <= t <= exact + SLACK + 1e-9


async def test_a_short_write_leaves_the_rest_to_the_send_task(autojump_clock):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends) as (_, player):
        await player.play(frames(4))  # three now, the fourth from the pacer at 20 ms
        sink.short = True
        await player.drain()
        await trio.sleep(0.1)
    assert len(sink.written) == 4
    # The send task woke once with nothing of its own: its write sends the bytes left over.
    assert [(stop, released) for _, stop, released in sends.sent] == [(False, [])]


async def test_stop_while_the_pacer_holds_a_deadline_sends_stop_audio_and_nothing_after(
    autojump_clock,
):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends) as (nursery, player):
        t0 = trio.current_time()
        nursery.start_soon(player.play, frames(50))
        await trio.sleep(0.105)  # frames 0-7 written: three at once, then at 20, 40 ... 100 ms
        player.stop()  # barge-in
        assert sink.stops == [t0 + 0.105]  # written by stop() itself, before it returned
        await trio.sleep(1)
    assert len(sink.written) == 8
    assert all(t - t0 <= 0.105 for t, _ in sink.written)
    assert sink.stops == [t0 + 0.105]
    assert sends.sent == []  # the send task never woke: neither for the stop nor for frames
    assert player.playout.stats.dropped_by_stop == 42 * F16


async def test_stop_while_a_write_is_in_progress_wakes_the_send_task_for_it(autojump_clock):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends) as (nursery, player):
        nursery.start_soon(player.play, frames(50))
        await trio.sleep(0.105)
        sink.busy = True  # stop-audio must not overtake the bytes being written
        player.stop()
        await trio.sleep(1)
    assert sink.stops == []
    assert [(stop, released) for _, stop, released in sends.sent] == [(True, [])]


async def test_a_stop_audio_the_socket_took_part_of_is_finished_by_the_send_task(autojump_clock):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends) as (nursery, player):
        nursery.start_soon(player.play, frames(50))
        await trio.sleep(0.105)
        sink.short = True
        player.stop()
        await trio.sleep(1)
    assert len(sink.stops) == 1
    # Woken once, with nothing of its own: its write sends the bytes left over.
    assert [(stop, released) for _, stop, released in sends.sent] == [(False, [])]


async def test_a_pause_stops_acs_at_once_and_a_resume_plays_on_from_the_pacer(autojump_clock):
    sink, sends = FakeSink(), Sends()
    async with paced_call(sink, sends) as (nursery, player):
        t0 = trio.current_time()
        nursery.start_soon(player.play, frames(20))
        await trio.sleep(0.105)  # frames 0-7 out; ACS holds 60 ms of them not yet played
        player.pause()  # a suspected barge-in
        assert sink.stops == [t0 + 0.105]  # written by pause() itself
        await trio.sleep(0.5)
        assert len(sink.written) == 8 and sends.sent == []  # nothing while paused
        player.resume()
        await player.drain()
    # What ACS had not played when it stopped goes again, then the rest, all in order.
    again = [f for _, stop, released in sends.sent for f in released]
    audio = b"".join(f for _, f in sink.written[8:])
    recalled = player.playout.stats.recalled  # ACS's unplayed 55 ms: part of frame 5, 6, 7
    assert recalled == 1760
    assert b"".join(again) + audio == frames(8)[-recalled:] + frames(20)[8 * F16 :]
    assert [stop for _, stop, _ in sends.sent] == [False]  # woken by resume(), not for a stop


class Failing(NoObserver):
    def bot_audio(self, frames: list[bytes], start: float) -> None:
        if start > trio.current_time():  # the first paced release, not play()'s own
            raise RuntimeError("observer bug")


async def test_a_failure_in_a_paced_release_ends_that_call_not_the_pacer(autojump_clock):
    sink, other = FakeSink(), FakeSink()
    failure: list[BaseException] = []

    async def send_task(player: Player) -> None:
        try:
            while True:
                await player.next_release()
        except RuntimeError as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        bad = Player(
            Playout(16000, lead_ms=60, catchup_ms=0), pacer=pacer, direct=sink, observer=Failing()
        )
        good = Player(Playout(16000, lead_ms=60, catchup_ms=0), pacer=pacer, direct=other)
        nursery.start_soon(send_task, bad)
        nursery.start_soon(send_task, good)
        await trio.sleep(0.001)
        nursery.start_soon(bad.play, frames(10))
        nursery.start_soon(good.play, frames(10))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [str(e) for e in failure] == ["observer bug"]
    assert len(other.written) == 10  # the other call, on the same pacer, played on


async def _two_calls_3_ms_apart(
    first: FakeSink, second: FakeSink, sends: Sends, late: list[float]
) -> tuple[float, float, Player]:
    """Two calls on one pacer, each playing 1 s at once, the second 3 ms after the first: its
    deadlines fall 3 ms after the first's, within the pacer's `early`. Returns when each
    started and the second's player."""
    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        a = Player(Playout(16000, lead_ms=60, catchup_ms=0), pacer=pacer, direct=first)
        b = Player(
            Playout(16000, lead_ms=60, catchup_ms=0),
            pacer=pacer,
            direct=second,
            on_late=late.append,
        )
        nursery.start_soon(Sends().run, a)
        nursery.start_soon(sends.run, b)
        await trio.sleep(0.001)
        t_a = trio.current_time()
        await a.play(frames(50))
        await trio.sleep(0.003)
        t_b = trio.current_time()
        await b.play(frames(50))
        await a.drain()
        await b.drain()
        nursery.cancel_scope.cancel()
    return t_a, t_b, b


async def test_a_deadline_just_after_a_wake_is_served_by_it_and_plays_as_it_would_have(
    autojump_clock,
):
    """The second call's frames go out with the first's, 3 ms before their deadlines: one
    wake-up of the pacer for both. What ACS plays, and when, is unchanged: the second call's
    playout clock ends exactly 1 s after it started, and its releases count as on time."""
    first, second, late = FakeSink(), FakeSink(), []
    t_a, t_b, b = await _two_calls_3_ms_apart(first, second, Sends(), late)
    paced_a = [t for t, _ in first.written[3:]]
    paced_b = [t for t, _ in second.written[3:]]
    assert paced_b == paced_a  # the same wake-ups
    for k, t in enumerate(paced_b, start=3):
        deadline = t_b + (k - 2) * 0.020
        assert deadline - EARLY - 1e-9 <= t <= deadline  # early, by at most `early`
    assert [f for _, f in second.written] == [
        frames(50)[k * F16 : (k + 1) * F16] for k in range(50)
    ]
    assert b.playout.position == approx(t_b + 1.0)  # ACS plays the last frame when it would have
    assert len(late) == 47 and set(late) == {0.0}


async def test_told_early_with_a_busy_socket_the_send_task_sends_at_once_and_sleeps_on(
    autojump_clock,
):
    """The same, with the second call's socket busy: its send task is woken early and sends
    what is due at the deadline then, once per frame, rather than waking again and again
    until the deadline comes."""
    first, second, sends = FakeSink(), FakeSink(), Sends()
    second.busy = True
    t_a, t_b, _ = await _two_calls_3_ms_apart(first, second, sends, [])
    by_task = [t for t, _, released in sends.sent for _ in released]
    assert len(by_task) == 50  # its first three frames too: the socket was busy from the start
    assert sends.returns == 48  # three at once, then one wake per paced frame
    for k, t in enumerate(by_task[3:], start=3):
        deadline = t_b + (k - 2) * 0.020
        assert deadline - EARLY - 1e-9 <= t <= deadline + SLACK + 1e-9


async def test_a_pause_just_after_an_early_release_takes_back_exactly_what_acs_had_not_played(
    autojump_clock,
):
    """A frame released early has not started playing: a pause then takes back everything ACS
    held, more than the lead by as much as the release was early, and the resume plays on
    from exactly where the caller stopped hearing, nothing counted as dropped."""
    first, second, sends = FakeSink(), FakeSink(), Sends()
    audio = frames(50)
    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        a = Player(Playout(16000, lead_ms=60, catchup_ms=0), pacer=pacer, direct=first)
        b = Player(Playout(16000, lead_ms=60, catchup_ms=0), pacer=pacer, direct=second)
        nursery.start_soon(Sends().run, a)
        nursery.start_soon(sends.run, b)
        await trio.sleep(0.001)
        await a.play(audio)
        await trio.sleep(0.003)
        await b.play(audio)
        # Its tenth frame's deadline is 140 ms on; it went with the first call's, 3 ms early.
        await trio.sleep(0.138)
        assert len(second.written) == 10
        buffered = b.playout.buffered_ms(trio.current_time())
        sent_before = len(second.written)
        assert not sends.sent  # so far every frame went from play() or the pacer
        b.pause()
        held = b.playout.stats.recalled
        await trio.sleep(0.2)
        b.resume()
        await b.drain()
        await a.drain()
        nursery.cancel_scope.cancel()
    assert 60 < buffered <= 60 + EARLY * 1000  # ACS held more than the lead: it went early
    assert held == round(buffered * 32)  # 32 bytes a millisecond at 16 kHz
    stats = b.playout.stats
    assert stats.dropped_by_stop == 0
    assert stats.released == len(audio)
    # At the resume the send task sends what is due at once (ACS was stopped), then the pacer
    # the rest.
    by_task = b"".join(f for _, stop, released in sends.sent if not stop for f in released)
    after = by_task + b"".join(f for _, f in second.written[sent_before:])
    assert after == audio[sent_before * F16 - held :]
