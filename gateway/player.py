"""Outbound audio: the playout clock (sans-IO `Playout`) and the processor-facing `Player`.

Owns: the outbound queue, pacing, barge-in, and the count of what the caller was sent.
Never: sockets or encoding (the call's send task does that), reading the clock itself inside
`Playout` (it is given `now`), drifting sleeps.

The playout clock. ACS plays what we send at real-time rate from its own queue. `position` is
the time at which the next frame we release would start playing there. A frame is due when,
once released, it would end no later than `now + lead`: we stay at most `lead` seconds ahead
of real time, so a barge-in leaves at most `lead` of audio already in ACS's hands. Each
release advances `position` by the frame's duration from max(position, now): absolute times,
accumulated, so pacing never drifts;
after an underrun (nothing to play) the next frame starts at `now`.

Frames are 20 ms of the call's format. Audio is queued in whole frames; a remainder shorter than
a frame (the end of an odd-sized chunk) waits for more audio of the same utterance and is
released on its own only when ACS would otherwise run dry (`position <= now + one frame`, and
never beyond the lead window) or when the producer calls `flush()`.

Bounds: the queue holds at most `capacity` seconds; `Player.play()` blocks while it is full
(back-pressure to the processor). `stop()` drops everything queued, counts it, and asks the
send task to send stop-audio before anything else.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final, Protocol

import attrs
import trio

from .pacer import Pacer
from .packets import BYTES_PER_SAMPLE, FRAME_MS, frame_bytes

DEFAULT_LEAD_MS: Final = 60  # three frames: absorbs send jitter, bounds audio heard after barge-in
DEFAULT_CAPACITY_MS: Final = 5000  # a model reply streams faster than real time; 5 s is ~160 KB
_EPSILON: Final = 1e-9  # seconds; accumulated float positions must not miss an exact due time
_UTTERANCES_KEPT: Final = 64  # released_ms is remembered for this many recent utterances


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


class Playout:
    """Sans-IO playout clock and bounded outbound queue for one call."""

    def __init__(
        self,
        sample_rate: int,
        *,
        lead_ms: float = DEFAULT_LEAD_MS,
        capacity_ms: float = DEFAULT_CAPACITY_MS,
    ) -> None:
        if lead_ms < FRAME_MS:
            raise ValueError(f"lead_ms must be at least one frame ({FRAME_MS} ms)")
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes(sample_rate)
        self.bytes_per_second = sample_rate * BYTES_PER_SAMPLE
        self.frame_seconds = FRAME_MS / 1000
        self.lead = lead_ms / 1000
        self.capacity_bytes = int(capacity_ms * self.bytes_per_second / 1000)
        self.stats = PlayoutStats()
        self.position: float | None = None  # playout time of the next frame; None = ACS idle
        self.stop_pending = False
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
        """Barge-in: drop everything queued; the send task must send stop-audio next."""
        self.stats.dropped_by_stop += self._queued
        self.stats.stops += 1
        self.drop_queue()
        self.position = None  # ACS drops its own queue on stop-audio
        self.stop_pending = True

    def not_sent(self, frames: list[bytes]) -> None:
        """Released frames the connection refused (the call was ending): count them unsent."""
        n = sum(len(f) for f in frames)
        self.stats.released -= n
        self.stats.frames_released -= len(frames)
        self.stats.unsent_at_end += n

    def drop_queue(self) -> None:
        """Forget everything queued (the caller counts it)."""
        self._frames.clear()
        self._tail.clear()
        self._queued = 0

    # -- send side --

    def next_due(self, now: float) -> float | None:
        """When the next release is due (may be <= now), or None if nothing is queued."""
        position = now if self.position is None or self.position < now else self.position
        if self._frames:  # once released, the head must end no later than now + lead
            return position + len(self._frames[0][0]) / self.bytes_per_second - self.lead
        if self._tail:  # only to keep ACS from running dry, and never beyond the lead
            return max(
                position - self.frame_seconds,
                position + len(self._tail) / self.bytes_per_second - self.lead,
            )
        return None

    def release_due(self, now: float) -> list[bytes]:
        """Take every frame due at `now`, in order, advancing the playout clock."""
        released: list[bytes] = []
        while True:
            due = self.next_due(now)
            if due is None or due > now + _EPSILON:
                return released
            if not self._frames:
                self.flush()
            pcm, utterance = self._frames.popleft()
            n = len(pcm)
            self._queued -= n
            position = now if self.position is None or self.position < now else self.position
            self.position = position + n / self.bytes_per_second
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
        """Milliseconds of `utterance` released towards ACS so far (the caller heard at most this)."""
        return self._released.get(utterance, 0) * 1000 / self.bytes_per_second

    def buffered_ms(self, now: float) -> float:
        """Milliseconds released but not yet played by ACS (at most `lead`)."""
        if self.position is None or self.position <= now:
            return 0.0
        return (self.position - now) * 1000


class DirectSink(Protocol):
    """Where `Player.play()` may write due frames itself (the call provides it)."""

    def ready(self) -> bool:
        """True if a write now would neither wait nor overtake anything."""

    def send(self, frames: list[bytes]) -> bool:
        """Write the frames without waiting; False if some bytes were left for the send task."""


class Player:
    """What a processor uses to speak into the call. One per call; not shared between calls.

    - `await play(pcm, utterance=...)` queues audio of any length; it blocks while the queue is
      full (back-pressure). After `stop()`, a `play()` that was blocked returns at once and the
      rest of its audio is discarded (counted), so stale audio never follows a barge-in.
    - `stop()` (not async: barge-in must not wait) drops the queue and sends stop-audio.
    - `released_ms(utterance)` says how much of an utterance the caller has been sent.
    """

    def __init__(
        self,
        playout: Playout,
        clock: Callable[[], float] = trio.current_time,
        pacer: Pacer | None = None,
        direct: DirectSink | None = None,
    ) -> None:
        self.playout = playout
        self._direct = direct  # lets play() write due frames itself when the sender is idle
        self._flush_pending = False  # the direct path left bytes for the send task
        self._clock = clock
        self._pacer = pacer  # a shared timer (see gateway.pacer); None: a timeout of our own
        self._sender = trio.lowlevel.ParkingLot()  # the send task waits here for work
        self._space = trio.lowlevel.ParkingLot()  # play() waits here for queue space
        self._generation = 0  # bumped by stop(): cuts short any play() in progress
        # When the parked send task will next look at the queue: +inf when it waits for audio,
        # its deadline when it waits for the clock, -inf while it runs (it re-checks anyway).
        # play() wakes it only if the new audio is due sooner, so a call with a backlog costs
        # one wake-up per frame, not two.
        self._sender_wakes_at = -math.inf
        self.closed = False

    @property
    def sample_rate(self) -> int:
        return self.playout.sample_rate

    @property
    def queued_ms(self) -> float:
        return self.playout.queued_bytes * 1000 / self.playout.bytes_per_second

    def released_ms(self, utterance: Hashable = None) -> float:
        return self.playout.released_ms(utterance)

    async def play(self, pcm: bytes, utterance: Hashable = None) -> None:
        """Queue PCM16 mono at the call's sample rate; blocks while the queue is full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(pcm) % BYTES_PER_SAMPLE:  # refuse it whole, not after queueing (playing) a part
            raise ValueError(f"PCM16 must be whole samples; got {len(pcm)} bytes")
        playout = self.playout
        if self.closed:
            playout.stats.discarded += len(pcm)
            return
        if len(pcm) <= playout.space_bytes:  # fast path: fits, no copy
            playout.enqueue(pcm, utterance)
            direct = self._direct
            if (
                direct is not None
                and self._sender_wakes_at == math.inf  # the send task is idle: nothing queued
                and not playout.stop_pending
                and direct.ready()
            ):
                # Release what is due from this task: one wake-up per frame fewer. The send
                # task still paces whatever is left, and owns stop-audio and blocking writes.
                frames = playout.release_due(self._clock())
                if frames and not direct.send(frames):
                    self._flush_pending = True
                    self._sender.unpark_all()
            self._wake_sender_if_due()
            return
        generation = self._generation
        view = memoryview(pcm)
        while view:
            space = playout.space_bytes - playout.space_bytes % BYTES_PER_SAMPLE
            if space <= 0:
                await self._space.park()
                if self.closed or generation != self._generation:
                    playout.stats.discarded += len(view)
                    return
                continue
            playout.enqueue(bytes(view[:space]), utterance)
            self._wake_sender_if_due()
            view = view[space:]

    def _wake_sender_if_due(self) -> None:
        due = self.playout.next_due(self._clock())
        if due is not None and due < self._sender_wakes_at:
            self._sender.unpark_all()

    def flush(self) -> None:
        """End of an utterance: let its last partial frame go without waiting for more audio."""
        self.playout.flush()
        self._sender.unpark_all()

    def stop(self) -> None:
        """Barge-in: drop all queued audio and send stop-audio to ACS right away."""
        self.playout.stop()
        self._generation += 1
        self._sender.unpark_all()
        self._space.unpark_all()

    async def drain(self) -> None:
        """Wait until everything queued has been released to ACS (e.g. before hanging up)."""
        while self.playout.queued_bytes and not self.closed:
            self.flush()
            await self._space.park()

    def close(self) -> None:
        """The call is over: what is still queued is counted as unsent, and later play() calls
        are discarded (and counted)."""
        if not self.closed:
            playout = self.playout
            playout.stats.unsent_at_end += playout.queued_bytes
            playout.drop_queue()
        self.closed = True
        self._space.unpark_all()
        self._sender.unpark_all()

    # -- used by the call's send task only --

    async def next_release(self) -> tuple[bool, list[bytes]]:
        """Wait until there is something to send: (stop-audio owed?, frames due now)."""
        playout = self.playout
        while True:
            now = self._clock()
            stop = playout.take_stop()
            frames = playout.release_due(now)
            if frames:
                self._space.unpark_all()
            if stop or frames or self._flush_pending:
                self._flush_pending = False
                return stop, frames
            if self.closed:
                await trio.sleep_forever()
            due = playout.next_due(now)
            try:
                if due is None:
                    self._sender_wakes_at = math.inf
                    await self._sender.park()
                elif self._pacer is not None:
                    self._sender_wakes_at = due
                    self._pacer.wake_at(due, self._sender)
                    await self._sender.park()
                else:
                    self._sender_wakes_at = due
                    with trio.move_on_at(due):
                        await self._sender.park()
            finally:
                self._sender_wakes_at = -math.inf
