"""Catching up: audio is held for the clock only while more than `catchup` waits in the queue.
A shorter backlog (what a stall or a slow call start leaves behind a real-time source such as
echo) goes to ACS at once, up to `lead + catchup` ahead, so such a source is not held frame by
frame for the rest of the call; a reply streaming in faster than real time is still paced by
the lead alone until its last `catchup`.
"""

from __future__ import annotations

import trio

from gateway.call.pacer import Pacer
from gateway.call.player import Player, Playout

F16 = 640  # bytes in 20 ms at 16 kHz
EPS = 1e-9


def frame(k: int) -> bytes:
    return (k % 65536).to_bytes(2, "little") * (F16 // 2)


def echo_for(p: Playout, frames: int, start: float, first: int = 0) -> tuple[float, int]:
    """A real-time source: one frame arrives every 20 ms and is offered at once. Returns the
    time of the next arrival, and how many arrivals left audio waiting for the clock."""
    now, held = start, 0
    for k in range(frames):
        p.enqueue(frame(first + k))
        p.release_due(now)
        held += p.queued_bytes > 0
        now += 0.020
    return now, held


def stall(p: Playout, now: float, ms: int, first: int) -> int:
    """The loop stalls for `ms`: the frames that came meanwhile are offered all at once.
    Returns how many went out."""
    n = ms // 20
    for k in range(n):
        p.enqueue(frame(first + k))
    return len(p.release_due(now + ms / 1000))


def test_after_a_stall_the_backlog_goes_at_once_and_nothing_is_held_for_a_minute():
    p = Playout(16000, lead_ms=60)
    now, held = echo_for(p, 50, 0.0)
    assert held == 0  # every frame went out on arrival
    assert stall(p, now, 100, first=50) == 5  # the lead alone would let three go
    assert p.buffered_ms(now + 0.100) <= (p.lead + p.catchup) * 1000 + 1e-6
    _, held = echo_for(p, 3000, now + 0.120, first=55)  # then real time again, for a minute
    assert held == 0
    assert p.stats.released == 3055 * F16


def test_with_catching_up_off_the_same_stall_holds_every_later_frame():
    p = Playout(16000, lead_ms=60, catchup_ms=0)
    now, _ = echo_for(p, 50, 0.0)
    assert stall(p, now, 100, first=50) == 3
    _, held = echo_for(p, 100, now + 0.120, first=55)
    assert held == 100  # the backlog never shrinks: each frame waits for the clock


def test_a_slow_call_start_is_not_held_either():
    """The first frames of a call came while the gateway was busy accepting it: four at once."""
    p = Playout(16000, lead_ms=60)
    for k in range(4):
        p.enqueue(frame(k))
    assert len(p.release_due(0.0)) == 4
    _, held = echo_for(p, 500, 0.020, first=4)
    assert held == 0


def test_a_fast_reply_is_paced_by_the_lead_until_its_last_catchup():
    p = Playout(16000, lead_ms=60)  # catching up: 100 ms, five frames
    for k in range(50):  # one second at once, as a model streams it
        p.enqueue(frame(k))
    times = []
    now = 0.0
    while p.queued_bytes:
        now = max(now, p.next_due(now))
        times += [now] * len(p.release_due(now))
    # Three at once, then one every 20 ms while more than five frames wait ...
    for k in range(45):
        assert abs(times[k] - max(0, k - 2) * 0.020) < EPS
    # ... and the last five together, when the sixth from the end went.
    assert all(abs(t - times[44]) < EPS for t in times[45:])
    assert p.buffered_ms(now) <= (p.lead + p.catchup) * 1000 + 1e-6


def test_a_backlog_longer_than_catching_up_is_held():
    p = Playout(16000, lead_ms=60)
    now, _ = echo_for(p, 50, 0.0)
    assert stall(p, now, 200, first=50) < 10  # ten frames: more than 100 ms waits
    assert p.queued_bytes > 0


def test_pause_takes_back_everything_acs_holds_when_caught_up():
    p = Playout(16000, lead_ms=60)
    now, _ = echo_for(p, 10, 0.0)
    assert stall(p, now, 100, first=10) == 5  # 100 ms in ACS's hands
    released = p.stats.released
    p.pause(now + 0.101)
    # All of it but the 1 ms ACS played comes back to the queue: nothing is lost uncounted.
    assert p.stats.released == released - (F16 * 5 - 32)
    assert p.queued_bytes == F16 * 5 - 32
    assert p.stats.dropped_by_stop == 0


async def test_an_echoing_call_after_a_stall_is_never_held_by_the_pacer(autojump_clock):
    """The player on the clock: echo's frames come every 20 ms, then a 100 ms stall brings five
    at once; afterwards no frame waits for a playout deadline (no lateness is measured)."""
    late: list[float] = []
    sent: list[float] = []

    async def send_task(player: Player) -> None:
        while True:
            _, frames = await player.next_release()
            sent.extend(trio.current_time() for _ in frames)

    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        player = Player(Playout(16000, lead_ms=60), pacer=pacer, on_late=late.append)
        nursery.start_soon(send_task, player)
        k = 0
        for _ in range(50):
            await player.play(frame(k))
            k += 1
            await trio.sleep(0.020)
        await trio.sleep(0.080)  # the stall
        for _ in range(5):
            await player.play(frame(k))
            k += 1
        for _ in range(500):
            await trio.sleep(0.020)
            await player.play(frame(k))
            k += 1
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert len(sent) == k
    assert late == []  # the send task never slept until a playout deadline
    assert max(sent[50:55]) - min(sent[50:55]) < EPS  # the stalled five went together
