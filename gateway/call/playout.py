"""The playout clock: a sans-IO outbound queue that says which frames are due.

Owns: pacing, the bounded queue, and the count of what the caller was sent. Never: sockets,
encoding, tasks, reading the clock (it is given `now`), or drifting sleeps.
`gateway.player.Player` drives it.

The playout clock. ACS plays what we send at real-time rate from its own queue. `position` is
the time at which the next frame we release would start playing there. A frame is due when,
once released, it would end no later than `now + lead`: we stay at most `lead` seconds ahead
of real time, so a barge-in leaves at most `lead` of audio already in ACS's hands (plus the
shared pacer's `early`, 5 ms, when it serves a deadline early: `gateway.call.pacer`). Each
release advances `position` by the frame's duration from max(position, now): absolute times,
accumulated, so pacing never drifts; after an underrun (nothing to play) the next frame starts
at `now`.

Catching up. Audio is held for the clock only while more than `catchup` (100 ms by default)
waits in the queue: a reply streaming in faster than real time. A backlog of at most that much
is what a stall of our loop or a slow call start leaves behind a real-time source (echo, audio
relayed as it comes), and such a source never lets it shrink: held, each of its frames would
wait for the clock, and cost the send side a timer wake-up, for the rest of the call. So the
lead stretches by `catchup` while the queue is that short: the backlog goes to ACS at once and
sits in ACS's queue instead of ours. The caller hears the same either way; ACS holds at most
`lead + catchup`, and only the first and last `catchup` of a fast reply may go that early.

Steps. The send side wakes when ACS holds `lead - step` and tops it up to `lead`: with `step` one
frame (the default) that is a frame per wake-up and per write. A longer step (40 ms: two frames)
halves a paced reply's wake-ups and socket writes, and leaves ACS as little as `lead - step`
to play on through a late wake-up. `next_wake` is when the send side next has to look;
`next_due` and `release_due` are the pacing itself, unchanged by the step, so a release woken at
its step's time takes every frame due by then, in one write.

Frames are 20 ms of the call's format. Audio is queued in whole frames; a remainder shorter than
a frame (the end of an odd-sized chunk) waits for more audio of the same utterance and is
released on its own only when ACS would otherwise run dry (`position <= now + one frame`, and
never beyond the lead window) or when the producer calls `flush()`.

Bounds: the queue holds at most `capacity` seconds; `Player.play()` blocks while it is full
(back-pressure to the processor). `stop()` drops everything queued, counts it, and asks the
send task to send stop-audio before anything else.

Pausing (a suspected barge-in that may prove false): `pause(now)` asks for stop-audio like
`stop()` but keeps the queue, and takes back the audio ACS had been sent but had not yet played
(`position - now`, at most the lead window; the last frames released are remembered for this):
it goes back to the head of the queue and out of `released_ms`, so the count stays what the
caller heard and `resume()` plays on from exactly where the caller's ears stopped. Nothing is
due while paused; `enqueue()` still queues.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import Final

import attrs

from ..acs.packets import BYTES_PER_SAMPLE, FRAME_MS, frame_bytes

DEFAULT_LEAD_MS: Final = 60  # three frames: absorbs send jitter, bounds audio heard after barge-in
DEFAULT_CAPACITY_MS: Final = 5000  # a model reply streams faster than real time; 5 s is ~160 KB
DEFAULT_CATCHUP_MS: Final = 100  # a backlog this short is sent at once: see "Catching up"
DEFAULT_STEP_MS: Final = FRAME_MS  # a paced frame per wake-up: see "Steps"
_EPSILON: Final = 1e-9  # seconds; accumulated float positions must not miss an exact due time
_UTTERANCES_KEPT: Final = 64  # released_ms is remembered for this many recent utterances


def check_step(step_ms: int, lead_ms: float) -> None:
    """A step is whole frames, and leaves ACS at least a frame to play on at each wake-up (one
    frame's step is allowed with any lead, as it always was)."""
    if step_ms % FRAME_MS or not FRAME_MS <= step_ms <= max(FRAME_MS, lead_ms - FRAME_MS):
        raise ValueError(
            f"playout_step_ms must be whole {FRAME_MS} ms frames, from {FRAME_MS} to "
            f"playout_lead_ms less a frame ({lead_ms - FRAME_MS:g}); got {step_ms}"
        )


@attrs.define(slots=True)
class PlayoutStats:
    """What happened to the audio this call was given to play; all in bytes of PCM."""

    accepted: int = 0  # handed to play()
    released: int = 0  # sent towards ACS
    dropped_by_stop: int = 0  # queued, then dropped by stop() (barge-in)
    discarded: int = 0  # play() after the call ended, or the rest of a play() cut by stop()
    unsent_at_end: int = 0  # still queued when the call ended
    frames_released: int = 0
    stops: int = 0
    pauses: int = 0
    recalled: int = 0  # released, then taken back by pause() before ACS played it (requeued)


class Playout:
    """Sans-IO playout clock and bounded outbound queue for one call."""

    __slots__ = (  # one per call
        "sample_rate",
        "frame_bytes",
        "bytes_per_second",
        "frame_seconds",
        "lead",
        "step_extra",
        "catchup",
        "catchup_bytes",
        "capacity_bytes",
        "stats",
        "position",
        "stop_pending",
        "paused",
        "_recent",
        "_recent_max",
        "_frames",
        "_tail",
        "_tail_utterance",
        "_queued",
        "_released",
    )

    def __init__(
        self,
        sample_rate: int,
        *,
        lead_ms: float = DEFAULT_LEAD_MS,
        capacity_ms: float = DEFAULT_CAPACITY_MS,
        catchup_ms: float = DEFAULT_CATCHUP_MS,
        step_ms: int = DEFAULT_STEP_MS,
    ) -> None:
        if lead_ms < FRAME_MS:
            raise ValueError(f"lead_ms must be at least one frame ({FRAME_MS} ms)")
        check_step(step_ms, lead_ms)
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes(sample_rate)
        self.bytes_per_second = sample_rate * BYTES_PER_SAMPLE
        self.frame_seconds = FRAME_MS / 1000
        self.lead = lead_ms / 1000
        self.step_extra = (step_ms - FRAME_MS) / 1000  # a wake-up waits this long past a due
        self.catchup = catchup_ms / 1000
        self.catchup_bytes = int(catchup_ms * self.bytes_per_second / 1000)
        self.capacity_bytes = int(capacity_ms * self.bytes_per_second / 1000)
        self.stats = PlayoutStats()
        self.position: float | None = None  # playout time of the next frame; None = ACS idle
        self.stop_pending = False
        self.paused = False
        # The last frames released, enough to cover the lead window: what pause() takes back,
        # (pcm, utterance, start), oldest first. A short list rather than a deque (whose first
        # block alone is ~0.6 KB a call); release_due() keeps it short (see there).
        self._recent: list[tuple[bytes, Hashable, float]] = []
        self._recent_max = math.ceil((lead_ms + catchup_ms) / FRAME_MS) + 2
        self._frames: deque[tuple[bytes, Hashable]] = deque()
        self._tail = bytearray()  # less than one frame, waiting for more of its utterance
        self._tail_utterance: Hashable = None
        self._queued = 0  # bytes in _frames and _tail
        self._released: dict[Hashable, int] = {}  # utterance -> bytes released

    # -- producer side --

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def space_bytes(self) -> int:
        return self.capacity_bytes - self._queued

    def enqueue(self, pcm: bytes, utterance: Hashable = None) -> None:
        """Queue `pcm` (whole 16-bit samples) as part of `utterance`. Does not check capacity."""
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM16 must be whole samples; got {len(pcm)} bytes")
        if not pcm:
            return
        self.stats.accepted += len(pcm)
        self._queued += len(pcm)
        fb = self.frame_bytes
        if self._tail and utterance != self._tail_utterance:
            self.flush()
        if not self._tail and len(pcm) == fb:  # the common case: one whole frame, no copy
            self._frames.append((pcm, utterance))
            return
        self._tail_utterance = utterance
        tail = self._tail
        tail += pcm
        whole = len(tail) - len(tail) % fb
        for start in range(0, whole, fb):
            self._frames.append((bytes(tail[start : start + fb]), utterance))
        del tail[:whole]

    def flush(self) -> None:
        """Queue the remainder shorter than a frame as a short frame of its own."""
        if self._tail:
            self._frames.append((bytes(self._tail), self._tail_utterance))
            self._tail.clear()

    def stop(self) -> None:
        """Barge-in: drop everything queued; the send task must send stop-audio next (unless a
        pause already stopped ACS and nothing was released since)."""
        self.stats.dropped_by_stop += self._queued
        self.stats.stops += 1
        self.drop_queue()
        self.position = None  # ACS drops its own queue on stop-audio
        if not self.paused:
            self.stop_pending = True
        self.paused = False

    def pause(self, now: float) -> None:
        """Stop ACS's playback (stop-audio owed) but keep the queue, and requeue at its head
        what ACS had been sent and not yet played; nothing is due until `resume()`."""
        if self.paused:
            return
        self.paused = True
        self.stats.pauses += 1
        recent = self._recent
        if self.position is not None and self.position > now:
            self.stop_pending = True  # only ACS's own queue needs dropping
            bps = self.bytes_per_second
            earliest = self.position  # the start of the earliest audio taken back
            while recent:
                pcm, utterance, start = recent[-1]
                if start < now:  # playing now: ACS has played its first `played` bytes
                    played = round((now - start) * bps)
                    played -= played % BYTES_PER_SAMPLE
                    if played < len(pcm):
                        self._recall(pcm[played:], utterance)
                    break
                recent.pop()
                self._recall(pcm, utterance)
                earliest = start
            else:  # more unplayed than remembered (many short frames): ACS drops that part
                lost = round((earliest - now) * bps)
                lost -= lost % BYTES_PER_SAMPLE
                self.stats.released -= lost
                self.stats.dropped_by_stop += lost
        self.position = None
        recent.clear()

    def _recall(self, pcm: bytes, utterance: Hashable) -> None:
        n = len(pcm)
        self._frames.appendleft((pcm, utterance))
        self._queued += n
        self.stats.released -= n
        self.stats.recalled += n
        if utterance in self._released:
            self._released[utterance] -= n

    def resume(self) -> None:
        """Let the queue play again, from where `pause()` left it."""
        self.paused = False

    def not_sent(self, frames: list[bytes]) -> None:
        """Released frames the connection refused (the call was ending): count them unsent."""
        n = sum(len(f) for f in frames)
        self.stats.released -= n
        self.stats.frames_released -= len(frames)
        self.stats.unsent_at_end += n

    def drop_queue(self) -> None:
        """Forget everything queued (the caller counts it)."""
        self._frames.clear()
        self._recent.clear()
        self._tail.clear()
        self._queued = 0

    # -- send side --

    def next_due(self, now: float) -> float | None:
        """When the next release is due (may be <= now), or None if nothing is queued (or
        the playout is paused)."""
        if self.paused:
            return None
        position = now if self.position is None or self.position < now else self.position
        lead = self.lead if self._queued > self.catchup_bytes else self.lead + self.catchup
        if self._frames:  # once released, the head must end no later than now + lead
            return position + len(self._frames[0][0]) / self.bytes_per_second - lead
        if self._tail:  # only to keep ACS from running dry, and never beyond the lead
            return max(
                position - self.frame_seconds,
                position + len(self._tail) / self.bytes_per_second - lead,
            )
        return None

    def next_wake(self, now: float) -> float | None:
        """When the send side next has to release (see "Steps"): when the head frame is due,
        or a step later, once ACS holds `lead - step` (the remainder shorter than a frame goes
        when it is due)."""
        due = self.next_due(now)
        if due is None or not self._frames:
            return due
        return due + self.step_extra

    def release_due(self, now: float, until: float | None = None) -> list[bytes]:
        """Take every frame due at `now` (or by `until`, a deadline a little later: the shared
        pacer's `early`), in order, advancing the playout clock."""
        released: list[bytes] = []
        limit = now if until is None or until < now else until
        while True:
            due = self.next_due(now)
            if due is None or due > limit + _EPSILON:
                return released
            if not self._frames:
                self.flush()
            pcm, utterance = self._frames.popleft()
            n = len(pcm)
            self._queued -= n
            position = now if self.position is None or self.position < now else self.position
            self.position = position + n / self.bytes_per_second
            recent = self._recent
            recent.append((pcm, utterance, position))
            # pause() walks back from the newest frame and stops at the first that started
            # before its `now` (which is no earlier than this one): frames older than the
            # newest one that started before `now` are never reached, so they are let go
            # here rather than held (with their PCM) until they fall out of the window.
            while len(recent) > 1 and recent[1][2] < now:
                del recent[0]
            if len(recent) > self._recent_max:
                del recent[0]
            self.stats.released += n
            self.stats.frames_released += 1
            if utterance in self._released:
                self._released[utterance] += n
            else:
                self._released[utterance] = n
                if len(self._released) > _UTTERANCES_KEPT:
                    del self._released[next(iter(self._released))]
            released.append(pcm)

    def take_stop(self) -> bool:
        """True once after each stop(): the send task owes ACS a stop-audio."""
        if self.stop_pending:
            self.stop_pending = False
            return True
        return False

    # -- accounting --

    def released_ms(self, utterance: Hashable = None) -> float:
        """Milliseconds of `utterance` released towards ACS so far (the caller heard at most
        this)."""
        return self._released.get(utterance, 0) * 1000 / self.bytes_per_second

    def buffered_ms(self, now: float) -> float:
        """Milliseconds released but not yet played by ACS (at most `lead` plus `catchup`, and
        the pacer's `early`)."""
        if self.position is None or self.position <= now:
            return 0.0
        return (self.position - now) * 1000
