"""The player: the sans-IO playout clock (`Playout`, given `now` by the test) and the async
`Player` on Trio's autojump clock (exact release times, lead window, stop, back-pressure,
wake-ups, accounting).

Times: frame durations are 0.020 s, which is not a binary fraction, so positions are compared
with a tolerance far below anything observable (1e-12 s for a few frames, 1e-9 s after 10 000);
a release is also checked to be refused a microsecond before its due time, so a tolerance can
never hide an early or late frame.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import sys
from collections import Counter

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.call.pacer import SLACK, Pacer
from gateway.call.player import Player, Playout

F16 = 640  # bytes in 20 ms at 16 kHz
F24 = 960  # bytes in 20 ms at 24 kHz
TIGHT = 1e-12  # seconds: float error of a few accumulated 20 ms steps is ~1e-17
EPS = 1e-9  # seconds: after 10 000 accumulated steps


def fb(rate: int) -> int:
    return {16000: F16, 24000: F24}[rate]


def frame(k: int, size: int = F16) -> bytes:
    """A frame whose every sample is `k`: order and identity are visible in the output."""
    return (k % 65536).to_bytes(2, "little") * (size // 2)


def frames(n: int, size: int = F16, first: int = 0) -> bytes:
    return b"".join(frame(first + k, size) for k in range(n))


def noise(n_bytes: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n_bytes)


def lead_only(rate: int, **kwargs: float) -> Playout:
    """A playout with catching up off: the lead rule alone (catching up has its own tests, in
    `test_playout_catchup.py`, and the state machine below runs with it on and off)."""
    return Playout(rate, catchup_ms=0, **kwargs)


def check_accounts(p: Playout) -> None:
    """No audio lost uncounted. (`unsent_at_end`: what a closing call still had queued.)"""
    s = p.stats
    assert s.accepted == s.released + s.dropped_by_stop + s.unsent_at_end + p.queued_bytes


# ---------------------------------------------------------------------------------------------
# Playout (sans-IO)
# ---------------------------------------------------------------------------------------------


def test_lead_below_one_frame_is_refused():
    with pytest.raises(ValueError):
        Playout(16000, lead_ms=19.9)
    Playout(16000, lead_ms=20)


@pytest.mark.parametrize("rate", [16000, 24000])
def test_frame_sizes_follow_the_sample_rate(rate):
    p = lead_only(rate)
    assert p.frame_bytes == fb(rate)
    assert p.bytes_per_second == rate * 2


def test_nothing_queued_nothing_due():
    p = lead_only(16000)
    assert p.next_due(0.0) is None
    assert p.release_due(0.0) == []
    assert p.take_stop() is False
    assert p.released_ms() == 0
    assert p.buffered_ms(0.0) == 0


def test_whole_frames_are_queued_as_they_are():
    p = lead_only(16000, lead_ms=60)
    pcm = frame(7)
    p.enqueue(pcm, "u")
    assert p.queued_bytes == F16
    (out,) = p.release_due(0.0)
    assert out == pcm
    check_accounts(p)


@pytest.mark.parametrize("odd", [1, 3, 641, 1279])
def test_odd_length_pcm_raises_and_is_not_counted(odd):
    p = lead_only(16000)
    p.enqueue(bytes(100))
    with pytest.raises(ValueError):
        p.enqueue(bytes(odd))
    assert p.stats.accepted == 100 and p.queued_bytes == 100
    check_accounts(p)


def test_empty_pcm_is_a_no_op():
    p = lead_only(16000)
    p.enqueue(b"", "a")
    assert p.queued_bytes == 0 and p.stats.accepted == 0 and p.next_due(0.0) is None


def test_long_queue_three_frames_at_t0_then_one_every_20_ms_exactly():
    p = lead_only(16000, lead_ms=60)
    n = 1000
    for k in range(n):
        p.enqueue(frame(k))
    assert p.next_due(0.0) == pytest.approx(-0.040, abs=TIGHT)  # already due
    assert p.release_due(0.0) == [frame(0), frame(1), frame(2)]
    assert p.position == pytest.approx(0.060, abs=TIGHT)
    assert p.buffered_ms(0.0) == pytest.approx(60, abs=1e-9)
    now = 0.0
    for k in range(3, n):
        due = p.next_due(now)
        assert due == pytest.approx((k - 2) * 0.020, abs=EPS)
        assert p.release_due(due - 1e-6) == []  # not a microsecond early
        assert p.release_due(due) == [frame(k)]  # exactly at its time, one frame only
        now = due
        assert p.buffered_ms(now) == pytest.approx(60, abs=1e-6)
    assert p.next_due(now) is None
    assert p.stats.frames_released == n
    assert p.released_ms() == pytest.approx(n * 20, abs=1e-9)
    check_accounts(p)


@pytest.mark.parametrize(("lead_ms", "burst"), [(20, 1), (40, 2), (60, 3), (100, 5), (70, 3)])
def test_the_lead_window_bounds_the_first_burst(lead_ms, burst):
    p = lead_only(16000, lead_ms=lead_ms)
    p.enqueue(frames(20))
    assert len(p.release_due(0.0)) == burst
    assert p.buffered_ms(0.0) <= lead_ms + 1e-9
    # the next frame is due exactly when it would end at now + lead
    assert p.next_due(0.0) == pytest.approx((burst + 1) * 0.020 - lead_ms / 1000, abs=TIGHT)


def test_a_busy_acs_queue_is_topped_up_only_to_the_lead():
    p = lead_only(16000, lead_ms=60)
    p.enqueue(frames(3))
    assert len(p.release_due(0.0)) == 3  # position 0.060
    p.enqueue(frames(5, first=3))
    # at 0.050 ACS still holds 10 ms: two more frames end at 0.100 <= 0.110, a third would not
    assert p.release_due(0.050) == [frame(3), frame(4)]
    assert p.position == pytest.approx(0.100, abs=TIGHT)
    assert p.next_due(0.050) == pytest.approx(0.060, abs=TIGHT)


def test_after_an_underrun_the_clock_restarts_at_now():
    p = lead_only(16000, lead_ms=60)
    p.enqueue(frame(0))
    assert p.release_due(0.0) == [frame(0)]
    assert p.position == pytest.approx(0.020, abs=TIGHT)
    assert p.next_due(0.0) is None
    p.enqueue(frames(10, first=1))
    # ACS ran dry at 0.020; at 5.0 the clock restarts: a full lead of three frames again
    assert p.next_due(5.0) == pytest.approx(5.0 - 0.040, abs=TIGHT)
    assert p.release_due(5.0) == [frame(1), frame(2), frame(3)]
    assert p.position == pytest.approx(5.060, abs=TIGHT)
    assert p.next_due(5.0) == pytest.approx(5.020, abs=TIGHT)


def test_an_underrun_by_a_fraction_of_a_frame_restarts_at_now_too():
    p = lead_only(16000, lead_ms=20)
    p.enqueue(frames(2))
    assert p.release_due(0.0) == [frame(0)]
    # the sender was 7 ms late: position (0.020) is behind now, so the frame starts at now
    assert p.release_due(0.027) == [frame(1)]
    assert p.position == pytest.approx(0.047, abs=TIGHT)


@pytest.mark.parametrize("rate", [16000, 24000])
@pytest.mark.parametrize("piece_ms", [30, 7, 1])
def test_pieces_are_assembled_into_exact_frames(rate, piece_ms):
    size = fb(rate)
    piece = rate * 2 * piece_ms // 1000
    audio = noise(size * 21, seed=piece_ms)  # 420 ms: a whole number of frames
    p = lead_only(rate, lead_ms=1000)
    for i in range(0, len(audio), piece):
        p.enqueue(audio[i : i + piece], "u")
        check_accounts(p)
    out = p.release_due(0.0)
    assert [len(f) for f in out] == [size] * 21
    assert b"".join(out) == audio
    assert p.queued_bytes == 0
    assert p.released_ms("u") == pytest.approx(420, abs=1e-9)


@pytest.mark.parametrize("rate", [16000, 24000])
def test_the_remainder_waits_for_more_of_its_utterance(rate):
    size = fb(rate)
    p = lead_only(rate, lead_ms=60)
    seven_ms = rate * 2 * 7 // 1000
    audio = noise(seven_ms * 10, seed=1)  # 70 ms: three frames and 10 ms
    for i in range(0, len(audio), seven_ms):
        p.enqueue(audio[i : i + seven_ms], "a")
    assert p.release_due(0.0) == [audio[:size], audio[size : 2 * size], audio[2 * size : 3 * size]]
    assert p.queued_bytes == len(audio) - 3 * size
    # ACS holds 60 ms: the 10 ms remainder waits until only one frame is left (t = 0.040)
    assert p.next_due(0.0) == pytest.approx(0.040, abs=TIGHT)
    assert p.release_due(0.039) == []
    # more of the same utterance completes the frame instead: no short frame goes out
    more = noise(size, seed=2)
    p.enqueue(more, "a")
    rest = audio[3 * size :] + more
    assert p.next_due(0.0) == pytest.approx(0.020, abs=TIGHT)  # a whole frame, by the lead
    assert p.release_due(0.020) == [rest[:size]]
    assert p.queued_bytes == len(rest) - size
    check_accounts(p)


@pytest.mark.parametrize("rate", [16000, 24000])
def test_the_remainder_goes_alone_when_acs_would_run_dry(rate):
    size = fb(rate)
    p = lead_only(rate, lead_ms=60)
    tail = noise(size // 2, seed=3)  # 10 ms
    p.enqueue(frames(3, size) + tail, "a")
    assert len(p.release_due(0.0)) == 3  # position 0.060
    due = p.next_due(0.0)
    assert due == pytest.approx(0.040, abs=TIGHT)  # position <= now + one frame
    assert p.release_due(due - 1e-6) == []
    assert p.release_due(due) == [tail]
    assert p.position == pytest.approx(0.070, abs=TIGHT)
    assert p.released_ms("a") == pytest.approx(70, abs=1e-9)
    assert p.queued_bytes == 0 and p.next_due(due) is None
    check_accounts(p)


def test_a_remainder_on_an_idle_acs_goes_at_once():
    p = lead_only(16000, lead_ms=60)
    p.enqueue(bytes(100), "a")
    assert p.next_due(3.0) <= 3.0
    assert p.release_due(3.0) == [bytes(100)]
    assert p.position == pytest.approx(3.0 + 100 / 32000, abs=TIGHT)


def test_flush_lets_the_remainder_go_by_the_lead_rule():
    p = lead_only(16000, lead_ms=60)
    p.enqueue(frames(2) + bytes(320), "a")  # 40 ms + 10 ms
    assert len(p.release_due(0.0)) == 2  # position 0.040; the remainder waits (0.020 due)
    assert p.release_due(0.0) == []
    p.flush()
    # now a short frame of its own: due when it would end at now + lead (0.050 - 0.060 < 0)
    assert p.release_due(0.0) == [bytes(320)]
    assert p.position == pytest.approx(0.050, abs=TIGHT)
    p.flush()  # nothing to flush: a no-op
    assert p.queued_bytes == 0
    check_accounts(p)


def test_flush_keeps_later_audio_of_the_same_utterance_apart():
    p = lead_only(16000, lead_ms=1000)
    p.enqueue(bytes(320), "a")
    p.flush()
    p.enqueue(frame(1), "a")
    assert [len(f) for f in p.release_due(0.0)] == [320, F16]


def test_a_new_utterance_flushes_the_previous_tail():
    p = lead_only(16000, lead_ms=200)
    a = noise(F16 + 320, seed=4)  # 30 ms of "a"
    b = noise(F16 + 320, seed=5)  # 30 ms of "b"
    p.enqueue(a, "a")
    p.enqueue(b, "b")
    # a's 10 ms tail is a short frame of its own: a frame never mixes two utterances
    assert p.release_due(0.0) == [a[:F16], a[F16:], b[:F16]]
    assert p.released_ms("a") == pytest.approx(30, abs=1e-9)
    assert p.released_ms("b") == pytest.approx(20, abs=1e-9)
    assert p.queued_bytes == 320  # b's remainder waits: ACS holds 50 ms
    check_accounts(p)


def test_a_new_utterance_of_whole_frames_after_a_tail():
    p = lead_only(16000, lead_ms=200)
    p.enqueue(bytes(100), "a")
    p.enqueue(frame(9), "b")  # the whole-frame fast path must not swallow a's tail
    assert p.release_due(0.0) == [bytes(100), frame(9)]
    assert p.released_ms("a") == pytest.approx(100 / 32, abs=1e-9)
    assert p.released_ms("b") == pytest.approx(20, abs=1e-9)


def test_released_ms_per_utterance_is_exact():
    p = lead_only(24000, lead_ms=60)
    p.enqueue(frames(4, F24), "r1")
    p.enqueue(frames(2, F24) + bytes(480), "r2")  # 50 ms
    assert len(p.release_due(0.0)) == 3
    assert (p.released_ms("r1"), p.released_ms("r2")) == (60, 0)
    assert len(p.release_due(0.020)) == 1
    assert (p.released_ms("r1"), p.released_ms("r2")) == (80, 0)
    p.flush()
    now = 0.020
    while p.queued_bytes:
        now = p.next_due(now)
        p.release_due(now)
    assert (p.released_ms("r1"), p.released_ms("r2")) == (80, 50)
    assert p.released_ms("never") == 0


def test_stop_drops_everything_counts_it_and_is_reported_once():
    p = lead_only(16000, lead_ms=60)
    p.enqueue(frames(10) + bytes(10), "a")
    assert len(p.release_due(0.0)) == 3
    assert p.take_stop() is False
    p.stop()
    assert p.stats.dropped_by_stop == 7 * F16 + 10
    assert p.stats.stops == 1
    assert p.queued_bytes == 0 and p.position is None
    assert p.next_due(0.0) is None and p.release_due(1.0) == []
    assert p.buffered_ms(0.001) == 0  # ACS dropped its queue too
    assert p.take_stop() is True
    assert p.take_stop() is False
    check_accounts(p)
    # the dropped tail does not prefix the next audio, and the clock restarts at now
    p.enqueue(frames(5, first=20), "b")
    assert p.release_due(0.001) == [frame(20), frame(21), frame(22)]
    assert p.position == pytest.approx(0.061, abs=TIGHT)
    assert p.released_ms("a") == pytest.approx(60, abs=1e-9)
    assert p.released_ms("b") == pytest.approx(60, abs=1e-9)
    check_accounts(p)


def test_stop_on_an_empty_queue_still_owes_acs_a_stop():
    p = lead_only(16000)
    p.stop()
    p.stop()
    assert p.stats.stops == 2 and p.stats.dropped_by_stop == 0
    assert p.take_stop() is True and p.take_stop() is False


@pytest.mark.parametrize("lead_ms", [20, 30, 40])
def test_a_short_remainder_never_exceeds_the_lead(lead_ms):
    """The lead bounds what ACS holds after a barge-in: a remainder sent to keep ACS from
    running dry must also fit in the lead window."""
    p = lead_only(16000, lead_ms=lead_ms)
    p.enqueue(frame(0) + bytes(600), "a")  # 20 ms + 18.75 ms
    now = 0.0
    out = []
    while p.queued_bytes:
        now = max(now, p.next_due(now))
        released = p.release_due(now)
        out += released
        assert released, "due but nothing released"
        assert p.position - now <= lead_ms / 1000 + 1e-12
    assert [len(f) for f in out] == [F16, 600]
    # and it still goes before ACS runs dry
    assert now < 0.020


def test_randomized_operations_never_lose_audio_uncounted():
    rng = random.Random(7)
    p = Playout(16000, lead_ms=60)
    now = 0.0
    expected = bytearray()  # accepted and not dropped, in order
    released = bytearray()
    dropped = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            chunk = rng.randbytes(2 * rng.randrange(0, 800))
            p.enqueue(chunk, rng.choice(["a", "b"]))
            expected += chunk
        elif op < 0.85:
            now += rng.choice([0.0, 0.001, 0.02, 0.05, rng.random() / 10])
            for f in p.release_due(now):
                assert 0 < len(f) <= F16
                released += f
            assert p.position is None or p.position - now <= 0.060 + 0.100 + 1e-9
        elif op < 0.95:
            p.flush()
        else:
            dropped += p.queued_bytes
            p.stop()
            assert p.take_stop()
            expected = released[:]
        s = p.stats
        assert s.accepted == s.released + s.dropped_by_stop + p.queued_bytes
        assert s.dropped_by_stop == dropped
        assert s.released == len(released)
        assert bytes(released) == bytes(expected[: len(released)])
    p.flush()
    while p.queued_bytes:  # drain at the clock's own pace
        now = max(now, p.next_due(now))
        for f in p.release_due(now):
            released += f
    assert bytes(released) == bytes(expected)


class PlayoutMachine(RuleBasedStateMachine):
    """A model of the playout queue: the audio accepted and neither released nor dropped, by
    utterance, in order. Every step checks accounting, order, framing and the clock."""

    @initialize(
        rate=st.sampled_from([16000, 24000]),
        lead_ms=st.sampled_from([20, 30, 60, 100]),
        catchup_ms=st.sampled_from([0, 100]),
    )
    def setup(self, rate: int, lead_ms: int, catchup_ms: int) -> None:
        self.p = Playout(rate, lead_ms=lead_ms, catchup_ms=catchup_ms)
        self.catchup = catchup_ms / 1000
        self.fb = fb(rate)
        self.bps = rate * 2
        self.lead = lead_ms / 1000
        self.now = 0.0
        self.pending = bytearray()  # accepted, not released, not dropped
        self.owner: list[str] = []  # utterance of each pending byte pair (per sample)
        self.enqueued = 0  # stream offset of the end of `pending`
        self.out = 0  # stream offset of the start of `pending`
        self.boundaries: set[int] = set()  # offsets where a short frame may end
        self.last_utterance: str | None = None
        self.released_by = Counter[str]()
        self.dropped = 0
        self.position: float | None = None  # the model's playout clock
        self.catchup_bytes = int(self.bps * self.catchup)  # a backlog this short is not held

    @rule(
        samples=st.integers(0, 1500),
        utterance=st.sampled_from(["a", "b", "c"]),
        seed=st.integers(0, 2**32),
    )
    def enqueue(self, samples: int, utterance: str, seed: int) -> None:
        pcm = random.Random(seed).randbytes(samples * 2)
        if pcm and utterance != self.last_utterance:
            self.boundaries.add(self.enqueued)
        self.p.enqueue(pcm, utterance)
        if pcm:
            self.last_utterance = utterance
        self.pending += pcm
        self.owner += [utterance] * samples
        self.enqueued += len(pcm)

    @rule(samples=st.integers(0, 700).map(lambda n: 2 * n + 1))
    def enqueue_odd(self, samples: int) -> None:
        with pytest.raises(ValueError):
            self.p.enqueue(bytes(samples), "a")

    @rule()
    def flush(self) -> None:
        self.p.flush()
        self.boundaries.add(self.enqueued)

    @rule()
    def stop(self) -> None:
        self.dropped += len(self.pending)
        self.p.stop()
        assert self.p.take_stop() is True
        assert self.p.take_stop() is False
        self.out = self.enqueued
        self.pending.clear()
        self.owner.clear()
        self.position = None
        self.last_utterance = None

    @rule(
        dt=st.one_of(
            st.sampled_from([0.0, 1e-6, 0.005, 0.010, 0.020, 0.040, 0.1, 2.0]), st.floats(0, 0.1)
        )
    )
    def advance_and_release(self, dt: float) -> None:
        self.release(self.now + dt)

    @precondition(lambda self: hasattr(self, "p") and self.p.next_due(self.now) is not None)
    @rule()
    def release_at_next_due(self) -> None:
        """What the send task does: sleep until exactly next_due, then release."""
        due = self.p.next_due(self.now)
        self.release(max(self.now, due))

    def release(self, now: float) -> None:
        p = self.p
        due = p.next_due(now)
        if due is not None and due > now + 1e-9:  # next_due is the earliest time: nothing before it
            assert p.release_due(now) == []
            probe = copy.deepcopy(p)
            assert probe.release_due(due), "nothing released at next_due"
            self.now = now
            return
        before = p.position
        got = p.release_due(now)
        assert got or due is None
        if due is not None:
            assert got, "a release was due but nothing came out"
        position = self.position if before is not None else None
        for f in got:
            n = len(f)
            assert 0 < n <= self.fb and n % 2 == 0
            assert f == self.pending[:n], "released audio out of order or altered"
            (utterance,) = set(self.owner[: n // 2])  # a frame never mixes utterances
            start = now if position is None or position < now else position
            if n < self.fb:  # a short frame ends at a flush, an utterance change, or ACS dry
                end = self.out + n
                assert end in self.boundaries or (
                    end == self.enqueued and start <= now + 0.020 + 1e-9
                ), "a remainder went out while more of its utterance could follow"
            position = start + n / self.bps
            short = len(self.pending) <= self.catchup_bytes  # a short backlog goes at once
            ahead = self.lead + (self.catchup if short else 0.0)
            assert position - now <= ahead + 1e-9, "released beyond the lead window"
            del self.pending[:n]
            del self.owner[: n // 2]
            self.out += n
            self.released_by[utterance] += n
        if got:
            assert p.position == pytest.approx(position, abs=1e-9)
            self.position = p.position
        # greedy: everything due at `now` went out
        assert p.release_due(now) == []
        after = p.next_due(now)
        assert after is None or after > now
        self.now = now

    @invariant()
    def accounts(self) -> None:
        if not hasattr(self, "p"):
            return
        s = self.p.stats
        assert self.p.queued_bytes == len(self.pending)
        assert s.accepted == s.released + s.dropped_by_stop + self.p.queued_bytes
        assert s.dropped_by_stop == self.dropped
        assert s.accepted == self.enqueued
        assert s.released == sum(self.released_by.values())
        for u in "abc":
            assert self.p.released_ms(u) == pytest.approx(
                self.released_by[u] * 1000 / self.bps, abs=1e-9
            )
        if self.p.position is not None:
            assert self.p.buffered_ms(self.now) <= (self.lead + self.catchup) * 1000 + 1e-6


PlayoutMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPlayoutMachine = PlayoutMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Player (async, autojump clock)
# ---------------------------------------------------------------------------------------------


Log = list[tuple[float, bool, list[bytes]]]


def bounded(test):
    """A hang fails the test instead of blocking: on the autojump clock, waiting forever jumps
    straight to this (virtual) deadline."""

    @functools.wraps(test)
    async def run(*args, **kwargs):
        with trio.fail_after(1000):
            await test(*args, **kwargs)

    return run


async def sender(player: Player, log: Log) -> None:
    """The call's send task, recording what it would send and checking the bounds each time."""
    p = player.playout
    while True:
        stop, released = await player.next_release()
        now = trio.current_time()
        assert stop or released, "woken for nothing to send"
        log.append((now, stop, released))
        assert p.buffered_ms(now) <= (p.lead + p.catchup) * 1000 + 1e-6, "beyond the lead"
        assert p.queued_bytes <= p.capacity_bytes, "queue over capacity"
        check_accounts(p)


def frame_times(log: Log, t0: float) -> list[float]:
    return [t - t0 for t, _, released in log for _ in released]


def sent(log: Log) -> list[bytes]:
    return [f for _, _, released in log for f in released]


@pytest.mark.parametrize("rate", [16000, 24000])
@bounded
async def test_one_second_at_once_exact_release_times(autojump_clock, rate):
    size = fb(rate)
    player = Player(lead_only(rate, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await trio.sleep(1.5)  # an arbitrary start, not t = 0
        t0 = trio.current_time()
        audio = frames(50, size)
        await player.play(audio)
        assert trio.current_time() == t0  # it fits: no waiting
        await player.drain()
        assert trio.current_time() - t0 == pytest.approx(47 * 0.020, abs=EPS)
        nursery.cancel_scope.cancel()
    assert sent(log) == [frame(k, size) for k in range(50)]
    times = frame_times(log, t0)
    assert times[:3] == [0.0, 0.0, 0.0]  # the whole lead at once
    assert times == pytest.approx([max(0, k - 2) * 0.020 for k in range(50)], abs=EPS)
    assert len(log) == 48  # one wake for the burst, then one per frame
    assert not any(stop for _, stop, _ in log)
    assert player.released_ms() == pytest.approx(1000, abs=1e-9)


@pytest.mark.parametrize("lead_ms", [20, 40, 100])
@bounded
async def test_the_first_burst_is_the_lead_window(autojump_clock, lead_ms):
    player = Player(lead_only(16000, lead_ms=lead_ms))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await player.play(frames(20))
        await player.drain()
        nursery.cancel_scope.cancel()
    burst = lead_ms // 20
    expected = [max(0, k - burst + 1) * 0.020 for k in range(20)]
    assert frame_times(log, 0.0) == pytest.approx(expected, abs=EPS)


@bounded
async def test_no_drift_after_ten_thousand_frames(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=300_000))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        t0 = trio.current_time()
        await player.play(bytes(F16 * 10_000))  # 200 s at once
        await player.drain()
        nursery.cancel_scope.cancel()
    times = frame_times(log, t0)
    assert len(times) == 10_000
    assert abs(times[9_999] - (10_000 - 3) * 0.020) <= 1e-9
    worst = max(abs(t - max(0, k - 2) * 0.020) for k, t in enumerate(times))
    assert worst <= 1e-9


@bounded
async def test_with_the_shared_pacer_frames_are_at_most_its_slack_late(autojump_clock):
    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        player = Player(lead_only(16000, lead_ms=60), pacer=pacer)
        log: Log = []
        nursery.start_soon(sender, player, log)
        t0 = trio.current_time()
        await player.play(frames(500))
        await player.drain()
        nursery.cancel_scope.cancel()
    times = frame_times(log, t0)
    assert len(times) == 500
    for k, t in enumerate(times):
        exact = max(0, k - 2) * 0.020
        assert exact - 1e-9 <= t <= exact + SLACK + 1e-9  # never early, never more than SLACK late
    # late wakes do not accumulate: the last frame is as close to its time as the first
    assert times[-1] - 497 * 0.020 <= SLACK + 1e-9


@pytest.mark.parametrize(
    ("capacity_ms", "returns_at"),
    [
        # play() returns once the rest fits: released + capacity >= 1 s of audio. Released
        # frames at t: 3 + t / 20 ms. 200 ms: 40 frames released -> t = 0.740.
        (200, 0.740),
        # 50 ms (2.5 frames): 47.5 frames must go, so 48 -> t = 0.900
        (50, 0.900),
    ],
)
@bounded
async def test_play_blocks_while_the_queue_is_full(autojump_clock, capacity_ms, returns_at):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=capacity_ms))
    log: Log = []
    audio = frames(50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        t0 = trio.current_time()
        await player.play(audio)
        assert trio.current_time() - t0 == pytest.approx(returns_at, abs=EPS)
        assert player.playout.stats.accepted == len(audio)  # all of it, nothing discarded
        assert player.playout.stats.discarded == 0
        await player.drain()
        nursery.cancel_scope.cancel()
    assert b"".join(sent(log)) == audio
    # back-pressure never changes the pacing
    assert frame_times(log, t0) == pytest.approx(
        [max(0, k - 2) * 0.020 for k in range(len(sent(log)))], abs=EPS
    )


@bounded
async def test_play_is_not_released_early_by_back_pressure(autojump_clock):
    """The blocked play() is still blocked a frame before the computed time."""
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=200))
    returned: list[float] = []

    async def speak() -> None:
        await player.play(frames(50))
        returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, [])
        nursery.start_soon(speak)
        await trio.sleep(0.739)
        assert returned == []
        assert player.queued_ms == pytest.approx(200)  # full, not over
        await trio.sleep(0.002)
        assert returned == [pytest.approx(0.740, abs=EPS)]
        nursery.cancel_scope.cancel()


@bounded
async def test_a_blocked_play_refills_a_tenth_of_the_queue_at_a_time(autojump_clock):
    """A reply longer than the queue: once play() has filled it, it wakes when a tenth of the
    queue (here 100 ms, five frames) has been released, not at every frame, and tops the queue
    up again; the pacing and the audio are as if it woke for every frame."""
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=1000))
    log: Log = []
    audio = frames(250)  # 5 s
    steps = StepsOf()
    lowest: list[float] = []  # the queue at each release while play() has audio left
    returned: list[float] = []

    async def speak() -> None:
        steps.task = trio.lowlevel.current_task()
        await player.play(audio)
        returned.append(trio.current_time())

    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, player, log)
            t0 = trio.current_time()
            nursery.start_soon(speak)
            while not returned:
                await trio.sleep(0.020)
                lowest.append(player.queued_ms)
            await player.drain()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert b"".join(sent(log)) == audio
    assert frame_times(log, t0) == pytest.approx(
        [max(0, k - 2) * 0.020 for k in range(250)], abs=EPS
    )
    # 250 frames: 53 go before play() first blocks, the other 197 wake it every 5 releases
    assert steps.steps <= 197 // 5 + 3
    assert min(lowest) >= 900 - 20 - EPS  # topped up before it runs a tenth (and a frame) low
    # it returns when the rest fits and a tenth is free: between 4.0 s (all would fit) and a
    # tenth later
    assert 3.94 - EPS <= returned[0] - t0 <= 3.94 + 0.100 + EPS


@bounded
async def test_stop_while_play_is_blocked(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=200))
    log: Log = []
    returned: list[float] = []
    old = frames(50)

    async def speak() -> None:
        await player.play(old, "old")
        returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        nursery.start_soon(speak)
        await trio.sleep(0.105)  # between frame times, play() blocked
        assert returned == []
        stopped = trio.current_time()
        player.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == stopped
        assert returned == [stopped]  # play() returned promptly
        new = frames(5, first=1000)
        await player.play(new, "new")  # right after the stop: plays at once
        await player.drain()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()

    stops = [i for i, (_, stop, _) in enumerate(log) if stop]
    assert len(stops) == 1
    at = stops[0]
    assert log[at][0] == stopped  # stop-audio goes at once, not at the next frame time
    before = sent(log[:at])
    after = sent(log[at:])  # in send order: the stop is sent before the entry's frames
    assert after == [frame(k) for k in range(1000, 1005)]  # nothing of "old" after the stop
    assert b"".join(before) == old[: len(before) * F16]
    # the new audio: three frames at the stop time (ACS dropped its queue), then every 20 ms
    new_times = [t - stopped for t, _, released in log[at:] for _ in released]
    assert new_times == pytest.approx([0, 0, 0, 0.020, 0.040], abs=EPS)

    s = player.playout.stats
    old_released = len(before) * F16
    assert old_released == (3 + 5) * F16  # 3 at t0, then 0.020 ... 0.100
    assert s.dropped_by_stop == 10 * F16  # the queue was full (200 ms)
    assert s.discarded == len(old) - old_released - s.dropped_by_stop
    assert s.accepted == s.released + s.dropped_by_stop
    assert s.accepted + s.discarded == len(old) + 5 * F16
    assert s.stops == 1
    assert player.released_ms("old") == pytest.approx(20 * len(before), abs=1e-9)
    assert player.released_ms("new") == pytest.approx(100, abs=1e-9)


@bounded
async def test_stop_is_sent_at_once_even_while_the_sender_waits_for_the_clock(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await player.play(frames(10))
        await trio.sleep(0.031)  # 4 frames sent; the sender sleeps until 0.040
        player.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == (0.031, True, [])
        assert player.playout.stats.dropped_by_stop == 6 * F16
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(log) == 3  # the burst, the frame at 0.020, the stop: nothing after it


@bounded
async def test_stop_then_play_before_the_sender_runs(autojump_clock):
    """stop() and a new play() in the same instant: one entry, stop first, then new audio."""
    player = Player(lead_only(16000, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await player.play(frames(10), "old")
        await trio.sleep(0.030)
        player.stop()
        await player.play(frames(2, first=50), "new")  # no checkpoint in between
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert log[-1] == (0.030, True, [frame(50), frame(51)])
    assert sent(log)[:4] == [frame(k) for k in range(4)]


@bounded
async def test_drain(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await player.drain()  # nothing queued: returns at once
        assert trio.current_time() == 0
        await player.play(frames(50) + bytes(320))  # 1 s and a 10 ms remainder
        await player.drain()
        # drain flushes the remainder: a short frame due when it would end at now + lead
        # (position 1.010 - 0.060)
        assert trio.current_time() == pytest.approx(0.950, abs=EPS)
        assert player.playout.queued_bytes == 0
        assert [len(f) for f in sent(log)] == [F16] * 50 + [320]
        assert frame_times(log, 0)[-1] == pytest.approx(0.950, abs=EPS)
        nursery.cancel_scope.cancel()


class StepsOf(trio.abc.Instrument):
    """Counts the steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@bounded
async def test_drain_sleeps_until_the_queue_is_empty_not_per_frame(autojump_clock):
    """A second of audio drains in 50 paced releases; the task in drain() wakes once for
    them, when the last has gone, not at every release."""
    player = Player(lead_only(16000, lead_ms=60))
    steps = StepsOf()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, player, [])
            await player.play(frames(50))
            steps.task = trio.lowlevel.current_task()
            await player.drain()
            assert player.playout.queued_bytes == 0
            assert trio.current_time() == pytest.approx(0.940, abs=EPS)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps <= 3


@bounded
async def test_drain_returns_on_stop(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, [])
        await player.play(frames(50))
        done: list[float] = []

        async def drain() -> None:
            await player.drain()
            done.append(trio.current_time())

        nursery.start_soon(drain)
        await trio.sleep(0.25)
        player.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0.25]
        nursery.cancel_scope.cancel()


@bounded
async def test_close(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=100))
    log: Log = []
    returned: list[float] = []

    async def speak() -> None:
        await player.play(frames(50))
        returned.append(trio.current_time())

    async def drain() -> None:
        await player.drain()
        returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        nursery.start_soon(speak)
        await trio.sleep(0.1)
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        accepted = player.playout.stats.accepted
        queued = player.playout.queued_bytes
        assert queued == 5 * F16  # full
        player.close()
        await trio.testing.wait_all_tasks_blocked()
        assert returned == [0.1, 0.1]  # the blocked play() and drain() both return at once
        s = player.playout.stats
        assert s.discarded == 50 * F16 - accepted
        assert s.unsent_at_end == queued and player.playout.queued_bytes == 0
        sent_at_close = len(sent(log))
        # later play() returns immediately, however much, and is counted, not queued
        await player.play(frames(500))
        await player.play(bytes(2))
        assert trio.current_time() == 0.1
        assert s.discarded == 50 * F16 - accepted + 500 * F16 + 2
        assert s.accepted == accepted
        check_accounts(player.playout)
        await trio.sleep(1)
        assert len(sent(log)) == sent_at_close  # nothing goes out after the call ended
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pcm", [frames(1), bytes(320), frames(7) + bytes(100)])
@bounded
async def test_an_idle_sender_wakes_at_once(autojump_clock, pcm):
    """Latency zero: play() on an idle player is sent in the same instant, not a frame later."""
    player = Player(lead_only(16000, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await trio.sleep(3.0)
        await player.play(bytes(F16 * 2))
        await trio.sleep(3.0)  # played out: ACS idle again
        log.clear()
        t = trio.current_time()
        await player.play(pcm)
        await trio.testing.wait_all_tasks_blocked()
        assert log, "the sender did not wake"
        assert log[0][0] == t
        assert b"".join(log[0][2]) == pcm[: 3 * F16]
        nursery.cancel_scope.cancel()


@bounded
async def test_new_audio_that_is_due_sooner_wakes_a_waiting_sender(autojump_clock):
    """The sender sleeps until a remainder is due (ACS about to run dry); audio completing the
    frame makes a whole frame due sooner, and the sender must not oversleep it."""
    player = Player(lead_only(16000, lead_ms=60))
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        await player.play(frames(3) + bytes(320), "a")  # 3 frames now; the 10 ms at 0.040
        await trio.sleep(0.010)
        await player.play(bytes(320) + frames(2), "a")  # three whole frames: next at 0.020
        await player.drain()
        nursery.cancel_scope.cancel()
    assert frame_times(log, 0) == pytest.approx([0, 0, 0, 0.020, 0.040, 0.060], abs=EPS)
    assert [len(f) for f in sent(log)] == [F16] * 6


@bounded
async def test_play_in_small_pieces_sends_whole_frames(autojump_clock):
    player = Player(lead_only(24000, lead_ms=60))
    log: Log = []
    audio = noise(F24 * 25 + 336, seed=9)  # 500 ms and 7 ms
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)
        for i in range(0, len(audio), 336):  # 7 ms pieces, all at once
            await player.play(audio[i : i + 336], "u")
        await player.drain()
        nursery.cancel_scope.cancel()
    assert [len(f) for f in sent(log)] == [F24] * 25 + [336]
    assert b"".join(sent(log)) == audio
    assert player.released_ms("u") == pytest.approx(507, abs=1e-9)


@bounded
async def test_released_ms_follows_the_frames_sent(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60))
    seen: list[tuple[float, float, int, int]] = []
    by_utterance: Counter[str] = Counter()

    async def watching_sender() -> None:
        while True:
            _, released = await player.next_release()
            for f in released:
                by_utterance["a" if f[0] < 100 else "b"] += 1
            seen.append(
                (
                    player.released_ms("a"),
                    player.released_ms("b"),
                    by_utterance["a"],
                    by_utterance["b"],
                )
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watching_sender)
        await player.play(frames(15), "a")
        await player.play(frames(10, first=100), "b")
        await trio.sleep(0.11)  # frames at 0 (three), 0.020, ..., 0.100
        assert player.released_ms("a") == pytest.approx(20 * (3 + 5), abs=1e-9)
        await player.drain()
        nursery.cancel_scope.cancel()
    for a_ms, b_ms, a_frames, b_frames in seen:
        assert a_ms == pytest.approx(20 * a_frames, abs=1e-9)
        assert b_ms == pytest.approx(20 * b_frames, abs=1e-9)
    assert seen[-1][2:] == (15, 10)


@bounded
async def test_odd_length_play_is_refused_before_anything_is_queued(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=100))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, [])
        with pytest.raises(ValueError):
            await player.play(bytes(3))  # fits
        with pytest.raises(ValueError):
            await player.play(bytes(F16 * 20 + 1))  # does not fit: must not half-play it
        assert trio.current_time() == 0
        assert player.playout.stats.accepted == 0
        nursery.cancel_scope.cancel()


@bounded
async def test_the_sender_wakes_once_per_frame_with_a_backlog(autojump_clock):
    """Audio queued behind a backlog does not wake the sender early (it would find nothing due
    and go back to sleep): one wake-up per release. The sender's passes are counted through
    the clock it reads once per pass."""
    passes = 0

    def clock() -> float:
        nonlocal passes
        if sys._getframe(1).f_code.co_name == "next_release":
            passes += 1
        return trio.current_time()

    player = Player(lead_only(16000, lead_ms=60, capacity_ms=10_000), clock=clock)
    wakes = 0

    async def counting_sender() -> None:
        nonlocal wakes
        while True:
            await player.next_release()
            wakes += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(counting_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert passes == 1  # looked once, found nothing, waits for audio
        await player.play(frames(10))
        for k in range(10):
            await trio.sleep(0.005)
            await player.play(frame(k))
        await trio.sleep(1)  # not drain(): its flush() wakes the sender on purpose
        assert player.playout.queued_bytes == 0
        nursery.cancel_scope.cancel()
    assert wakes == 1 + 17  # the burst of three, then one per frame
    # per release: one pass that goes to sleep, one on waking that releases; then one last pass
    # that finds the queue empty. Nothing else: no wake-up that finds nothing to do.
    assert passes == 2 * wakes + 1


async def test_audio_not_due_yet_wakes_the_sender_once_through_the_pacer(autojump_clock):
    """A call whose playout runs ahead of real time (here: after a burst) gets each new frame
    held for the clock. play() hands that deadline to the pacer instead of waking the sender
    early: two passes per frame (the release, and the one that finds the queue empty), frames
    never early, and the lateness still reported."""
    passes = 0

    def clock() -> float:
        nonlocal passes
        if sys._getframe(1).f_code.co_name == "next_release":
            passes += 1
        return trio.current_time()

    late: list[float] = []
    released: list[float] = []
    async with trio.open_nursery() as nursery:
        pacer = Pacer()
        await nursery.start(pacer.run)
        player = Player(lead_only(16000, lead_ms=60), clock=clock, pacer=pacer, on_late=late.append)

        async def timing_sender() -> None:
            while True:
                _, sent = await player.next_release()
                released.extend(trio.current_time() for _ in sent)

        nursery.start_soon(timing_sender)
        t0 = trio.current_time()
        await player.play(frames(10))  # the burst: the clock ends 60 ms ahead of real time
        await trio.sleep_until(t0 + 0.150)  # the queue is empty; the clock is at 0.200
        passes = 0
        for _ in range(20):
            await player.play(frame(7))  # due 10 ms after it arrives
            await trio.sleep(0.020)
        nursery.cancel_scope.cancel()
    held = [t - t0 for t in released[10:]]
    assert len(held) == 20
    for k, t in enumerate(held):
        due = 0.160 + 0.020 * k
        assert due - 1e-9 <= t <= due + SLACK + 1e-9
    assert passes == 2 * 20
    assert len(late) >= 20 and max(late) <= SLACK + 1e-9


@bounded
async def test_the_queue_never_exceeds_its_capacity_under_a_fast_producer(autojump_clock):
    player = Player(lead_only(16000, lead_ms=60, capacity_ms=100))
    log: Log = []
    rng = random.Random(3)
    total = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, player, log)  # asserts queued <= capacity at every release
        for _ in range(200):
            n = 2 * rng.randrange(1, 2000)
            total += n
            await player.play(bytes(n))
            assert player.playout.queued_bytes <= player.playout.capacity_bytes
        await player.drain()
        nursery.cancel_scope.cancel()
    assert sum(len(f) for f in sent(log)) == total
    # the producer was held to real time: 1 frame per 20 ms after the first lead
    assert math.isclose(trio.current_time(), (math.ceil(total / F16) - 3) * 0.020, abs_tol=0.021)
