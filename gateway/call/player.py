"""`Player`: what a processor uses to speak into the call, driving the playout clock.

Owns: waiting (back-pressure in `play()`, the send task's wait for the clock), barge-in, and
when the direct path may be used. Never: sockets, encoding, or the order of writes (the call
gives it a `DirectSink`, which the WebSocket provides and keeps in order).
The clock itself, and the rules of pacing, are in `gateway.call.playout`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Protocol

import trio

from ..acs.packets import BYTES_PER_SAMPLE
from .observer import NO_OBSERVER, CallObserver
from .pacer import Pacer
from .playout import DEFAULT_CAPACITY_MS, DEFAULT_LEAD_MS, Playout, PlayoutStats

__all__ = [
    "DEFAULT_CAPACITY_MS",
    "DEFAULT_LEAD_MS",
    "DirectSink",
    "Player",
    "Playout",
    "PlayoutStats",
]


class DirectSink(Protocol):
    """Where `Player.play()` may write due frames itself, from the processor's task
    (`ServerWebSocket.direct_sink` provides it)."""

    def ready(self) -> bool:
        """True if a write now would neither wait nor overtake anything."""

    def send(self, frames: list[bytes]) -> bool:
        """Write the frames without waiting; False if some bytes were left for the send task."""

    def send_stop(self) -> bool:
        """Write stop-audio without waiting; False if some bytes were left for the send task."""


class Player:
    """What a processor uses to speak into the call. One per call; not shared between calls.

    - `await play(pcm, utterance=...)` queues audio of any length; it blocks while the queue is
      full (back-pressure), and once blocked it goes on when a tenth of the queue is free, or
      all its rest fits (not at every frame released: one wake-up per tenth of the queue). After
      `stop()`, a `play()` that was blocked returns at once and the rest of its audio is
      discarded (counted), so stale audio never follows a barge-in.
    - `play_nowait(pcm, utterance=...)` queues audio only if all of it fits now (False if
      not): for code that must not wait, such as an inline audio handler.
    - `stop()` (not async: barge-in must not wait) drops the queue and sends stop-audio.
    - `pause()` (not async either) sends stop-audio but keeps the queue, with the audio ACS had
      not yet played put back at its head; `play()` still queues (and blocks when full);
      `resume()` plays on from where the caller stopped hearing; `stop()` ends a pause for good.
    - `released_ms(utterance)` says how much of an utterance the caller has been sent.
    """

    __slots__ = (  # one per call
        "playout",
        "observer",
        "_on_late",
        "_direct",
        "_flush_pending",
        "_clock",
        "_pacer",
        "_sender",
        "_space",
        "_refill",
        "_drained",
        "_generation",
        "_sender_wakes_at",
        "_woken_for",
        "_failed",
        "closed",
    )

    def __init__(
        self,
        playout: Playout,
        clock: Callable[[], float] = trio.current_time,
        pacer: Pacer | None = None,
        direct: DirectSink | None = None,
        on_late: Callable[[float], None] | None = None,
        observer: CallObserver = NO_OBSERVER,
    ) -> None:
        self.playout = playout
        self.observer = observer  # told of every release and cut, as ACS will play them
        self._on_late = on_late  # told how late the send task ran after a playout deadline
        self._direct = direct  # lets play() write due frames itself when the sender is idle
        self._flush_pending = False  # the direct path left bytes for the send task
        self._clock = clock
        self._pacer = pacer  # a shared timer (see gateway.pacer); None: a timeout of our own
        self._sender = trio.lowlevel.ParkingLot()  # the send task waits here for work
        self._space = trio.lowlevel.ParkingLot()  # play() waits here for queue space
        # Space for which a blocked play() is woken: a tenth of the queue. A reply longer than
        # the queue (a model streams faster than real time) would otherwise cost its producer a
        # wake-up per frame released for the rest of the reply.
        self._refill = max(BYTES_PER_SAMPLE, playout.capacity_bytes // 10)
        self._drained = trio.lowlevel.ParkingLot()  # drain() waits here for an empty queue
        self._generation = 0  # bumped by stop(): cuts short any play() in progress
        # When the parked send task will next look at the queue: +inf when it waits for audio,
        # its deadline when it waits for the clock, -inf while it runs (it re-checks anyway).
        # play() wakes it only if the new audio is due sooner, so a call with a backlog costs
        # one wake-up per frame, not two; audio that is not due yet it hands to the pacer
        # instead, so a call whose playout runs ahead of real time costs one wake-up too.
        self._sender_wakes_at = -math.inf
        self._woken_for: float | None = None  # the deadline that woke the send task, if one did
        self._failed: Exception | None = None  # raised in the send task: see deadline_passed
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
        if self.play_nowait(pcm, utterance):
            if self.closed:
                # A schedule point: a processor looping on play() after hang-up must not
                # starve the event loop (and with it every other call, and its own hang-up
                # deadline).
                await trio.lowlevel.checkpoint()
            return
        playout = self.playout
        generation = self._generation
        view = memoryview(pcm)
        parked = False
        while view:
            space = playout.space_bytes - playout.space_bytes % BYTES_PER_SAMPLE
            # Once blocked, it fills the queue again only a tenth at a time (or with all its
            # rest), as `_release` wakes it; another play() may have taken the space meanwhile.
            if space <= 0 or (parked and space < min(len(view), self._refill)):
                await self._space.park()
                parked = True
                if self.closed or generation != self._generation:
                    playout.stats.discarded += len(view)
                    return
                continue
            playout.enqueue(bytes(view[:space]), utterance)
            self._wake_sender_if_due()
            view = view[space:]

    def play_nowait(self, pcm: bytes, utterance: Hashable = None) -> bool:
        """Queue PCM16 mono whole if the queue has room for all of it now, without waiting;
        False, with nothing queued, if it has not. For an inline audio handler, which runs in
        the receive task and must not block (`gateway.call.interface.AudioHandler`). After
        the call has ended the audio is discarded and counted, as `play()` does, and this
        returns True."""
        if len(pcm) % BYTES_PER_SAMPLE:  # refuse it whole, not after queueing (playing) a part
            raise ValueError(f"PCM16 must be whole samples; got {len(pcm)} bytes")
        playout = self.playout
        if self.closed:
            playout.stats.discarded += len(pcm)
            return True
        if len(pcm) > playout.space_bytes:
            return False
        playout.enqueue(pcm, utterance)  # no copy
        direct = self._direct
        if (
            direct is not None
            and self._sender_wakes_at == math.inf  # the send task is idle: nothing queued
            and not playout.stop_pending
            and direct.ready()
        ):
            # Release what is due from this task: one wake-up per frame fewer. The send task
            # still writes whatever would block.
            now = self._clock()
            start = playout.position
            frames = playout.release_due(now)
            if frames:
                self.observer.bot_audio(frames, now if start is None or start < now else start)
                if not direct.send(frames):
                    self._flush_pending = True
                    self._sender.unpark_all()
        self._wake_sender_if_due()
        return True

    def _wake_sender_if_due(self) -> None:
        now = self._clock()
        due = self.playout.next_wake(now)
        if due is None or due >= self._sender_wakes_at:
            return
        if self._sender_wakes_at == math.inf and due > now and self._pacer is not None:
            # The send task waits for audio and this audio is not due yet (the call's playout
            # runs ahead of real time, e.g. after a stall): have the pacer wake it when it is
            # due, rather than waking it now only for it to ask the pacer the same.
            self._sender_wakes_at = due
            self._pacer.wake_at(due, self)
            return
        self._sender.unpark_all()

    def flush(self) -> None:
        """End of an utterance: let its last partial frame go without waiting for more audio."""
        self.playout.flush()
        self._sender.unpark_all()

    def stop(self) -> None:
        """Barge-in: drop all queued audio and send stop-audio to ACS right away."""
        self.playout.stop()
        self._generation += 1
        self._stop_audio_now()
        self._space.unpark_all()
        self._drained.unpark_all()

    @property
    def paused(self) -> bool:
        return self.playout.paused

    def pause(self) -> None:
        """A suspected barge-in: stop-audio to ACS right away, keep everything not yet played
        (including what ACS had buffered), release nothing until `resume()` or `stop()`."""
        self.playout.pause(self._clock())
        self._stop_audio_now()

    def _stop_audio_now(self) -> None:
        """The stop-audio a stop or pause owes goes out from this task when the socket takes it
        at once without overtaking anything: a barge-in then waits for no other task (the
        send task would run after every task already runnable, milliseconds under load).
        Otherwise the send task is woken to send it."""
        playout, direct = self.playout, self._direct
        if (
            playout.stop_pending
            and direct is not None
            and not self.closed
            and not self._flush_pending
            and direct.ready()
        ):
            playout.take_stop()
            self.observer.bot_cut(self._clock())
            if direct.send_stop():
                return
            self._flush_pending = True  # the send task writes the rest
        self._sender.unpark_all()

    def resume(self) -> None:
        """The barge-in was false: play on from where `pause()` stopped the caller hearing."""
        if self.playout.paused:
            self.playout.resume()
            self._sender.unpark_all()

    async def drain(self) -> None:
        """Wait until everything queued has been released to ACS (e.g. before hanging up);
        while paused, that is after `resume()` (or `stop()`)."""
        parked = False
        while self.playout.queued_bytes and not self.closed:
            self.flush()
            await self._drained.park()
            parked = True
        if not parked:  # always a schedule point, so a `while: play(); drain()` loop yields
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """The call is over: what is still queued is counted as unsent, and later play() calls
        are discarded (and counted)."""
        if not self.closed:
            playout = self.playout
            playout.stats.unsent_at_end += playout.queued_bytes
            playout.drop_queue()
        self.closed = True
        self._space.unpark_all()
        self._drained.unpark_all()
        self._sender.unpark_all()

    # -- the pacer --

    def deadline_passed(self, deadline: float, now: float) -> None:
        """The pacer: the send task's deadline passed. What is due goes straight to the socket
        when it can take it, and the send task sleeps on to the next deadline (a wake-up per
        paced frame saved: every frame of a bot's reply is paced); otherwise the send task
        wakes and sends. Never raises: a failure is raised in the call's send task."""
        if deadline != self._sender_wakes_at:
            return  # stale: the send task woke meanwhile and chose its own wait
        try:
            self._release_paced(deadline, now)
        except Exception as exc:  # a bug must end this call, not the pacer every call shares
            self._failed = exc
            self._sender.unpark_all()

    def _release_paced(self, deadline: float, now: float) -> None:
        playout, direct, pacer = self.playout, self._direct, self._pacer
        if (
            direct is None
            or pacer is None
            or self.closed
            or playout.stop_pending
            or self._flush_pending
            or not direct.ready()
        ):
            self._woken_for = deadline
            self._sender.unpark_all()
            return
        frames = self._release(now, deadline)  # told early: what is due at the deadline
        if frames:
            if self._on_late is not None:
                self._on_late(now - deadline if now > deadline else 0.0)
            if not direct.send(frames):
                self._flush_pending = True  # the send task writes the rest
                self._sender.unpark_all()
                return
        due = playout.next_wake(now)
        if due is None:
            self._sender_wakes_at = math.inf  # waits for audio, as if it had parked for it
        else:
            self._sender_wakes_at = due
            pacer.wake_at(due, self)

    def _release(self, now: float, until: float | None = None) -> list[bytes]:
        """The frames due at `now` (or by `until`: see `Playout.release_due`), told to the
        observer (where ACS plays them); their room in the queue goes to a blocked `play()`."""
        playout = self.playout
        start = playout.position
        frames = playout.release_due(now, until)
        if frames:
            self.observer.bot_audio(frames, now if start is None or start < now else start)
            # Looked at first: an empty lot's unpark_all() costs about a microsecond, on every
            # paced release.
            if self._space and playout.space_bytes >= self._refill:
                self._space.unpark_all()
            if not playout.queued_bytes:
                self._drained.unpark_all()
        return frames

    # -- used by the call's send task only --

    async def next_release(self) -> tuple[bool, list[bytes]]:
        """Wait until there is something to send: (stop-audio owed?, frames due now)."""
        playout = self.playout
        late_from = None  # the playout deadline that woke the send task, if one did
        while True:
            if self._failed is not None:
                raise self._failed
            now = self._clock()
            stop = playout.take_stop()
            if stop:
                self.observer.bot_cut(now)
            # Woken by the pacer up to `Pacer.early` before a deadline: what is due at it goes.
            frames = self._release(now, late_from)
            if frames:
                if late_from is not None and self._on_late is not None and now >= late_from:
                    self._on_late(now - late_from)
            if stop or frames or self._flush_pending:
                self._flush_pending = False
                return stop, frames
            if self.closed:
                await trio.sleep_forever()
            due = playout.next_wake(now)
            self._woken_for = None
            try:
                if due is None:
                    self._sender_wakes_at = math.inf
                    await self._sender.park()
                elif self._pacer is not None:
                    self._sender_wakes_at = due
                    self._pacer.wake_at(due, self)
                    await self._sender.park()
                else:
                    self._sender_wakes_at = due
                    with trio.move_on_at(due) as timer:
                        await self._sender.park()
                    if timer.cancelled_caught:
                        self._woken_for = due
            finally:
                self._sender_wakes_at = -math.inf
            late_from = self._woken_for
