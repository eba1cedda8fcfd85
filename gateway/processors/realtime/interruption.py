"""`Interruptions`: what a suspected barge-in does to the bot's reply: cancel it, or pause it
until the interruption is confirmed or proves false.

Owns: the `interruption` policy of one call. `cancel`: every suspected interruption (the model's
`speech_started`, or the local VAD) is a barge-in at once (the bridge's `barge_in`: stop the
player, cancel the response, truncate to what was heard). `pause`: the player is paused at once
(stop-audio to ACS in the same step; the unplayed rest of the reply, including what ACS had
buffered, is kept), then
- confirmed, and handled as a barge-in, when the model transcribes words from the caller, when
  the model's speech_stopped shows speech of at least `interruption_min_ms`, when the model
  starts a new response (it took the sound as the caller's turn), or when the caller is still
  speaking at `interruption_confirm_ms`;
- false otherwise (a cough, a noise, a short "mm-hm" the transcription leaves blank): the player
  resumes where it paused, and the model is not asked again (the sound's item is deleted when
  the model committed it). That is decided as soon as the speech ended short and its transcript
  (if transcription is on) came back blank, or at the deadline; words transcribed later still
  confirm it then.
With `send` (the session's `create_response` is off: see `options`), the gateway asks for a
response when a caller's turn ends that was no false alarm.
Never: sends to the model itself (`barge_in` does), reads sockets, or decides what the model
said (the bridge passes it events).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ...audio.vad import WebRtcVad
from ...call.interface import Call
from . import protocol
from .protocol import SpeechStarted, SpeechStopped

CANCEL: Final = "cancel"
PAUSE: Final = "pause"
POLICIES: Final = (CANCEL, PAUSE)
_CREATE_RESPONSE: Final = '{"type":"response.create"}'


class Interruptions:
    """One call's interruption policy; the bridge calls the event methods from its tasks and
    runs `watch()` in its nursery (the deadline of a pause)."""

    def __init__(
        self,
        call: Call,
        policy: str,
        *,
        confirm_ms: int,
        min_ms: int,
        transcribed: bool,
        barge_in: Callable[[], Awaitable[None]],
        stop: Callable[[], None],
        send: Callable[[list[str]], Awaitable[None]] | None,
        audible: Callable[[], bool],
        vad: WebRtcVad | None,
    ) -> None:
        assert call.player is not None and policy in POLICIES
        self.call = call
        self.player = call.player
        self.pausing = policy == PAUSE
        self.confirm_s = confirm_ms / 1000
        self.min_ms = min_ms
        self.transcribed = transcribed  # a transcript of the caller's words will follow
        self._barge_in = barge_in  # the bot stopped, then the model told
        self._stop = stop  # the bot stopped: `barge_in`'s first half, which never waits
        self._send = send  # None: the model answers each turn itself (create_response)
        self._resumed_item: str | None = None  # the caller's item of the last false alarm
        self._committed = False  # the model's speech_stopped came for the current item
        self._audible = audible
        self._vad = vad
        self.paused_at: float | None = None  # a pause awaits its verdict
        self._by = ""
        self._model_speaking: bool | None = None  # None: the model has not heard speech yet
        self._speech_start_ms: int | None = None
        self._item_id: str | None = None  # the caller's item the model is hearing
        self._ended_short = False
        self._changed = trio.lowlevel.ParkingLot()

    def close(self) -> None:
        """The call has ended: drop the bridge's callbacks, so no reference cycle keeps the
        bridge (and its resamplers) alive until the cyclic GC runs."""
        self._barge_in = _nothing
        self._stop = _stay
        self._send = None
        self._audible = _silent

    # -- what the bridge reports --

    async def suspected(self, event: SpeechStarted) -> None:
        """The model heard the caller start speaking: maybe over the bot (the local VAD's
        suspicion is `heard_now`)."""
        self._model_speaking = True
        self._speech_start_ms = event.audio_start_ms
        self._item_id = event.item_id
        self._ended_short = False
        self._committed = False
        if self.paused_at is not None:
            return  # already paused: this is the same (or a longer) interruption
        if not self.pausing or not self._audible():
            await self._barge_in()
            return
        self._pause("model")

    def heard_now(self) -> bool:
        """The local VAD suspects the caller, in the task that read the frame: the bot is
        paused or stopped at once, never behind the model's socket. True: a barge-in the
        model must now be told of (the bridge does, in order with the caller's audio)."""
        if self.paused_at is not None:
            return False
        if not self.pausing or not self._audible():
            self._stop()
            return True
        self._model_speaking = None  # until the model says what it heard
        self._pause("vad")
        return False

    def _pause(self, by: str) -> None:
        self.player.pause()
        self.paused_at = trio.current_time()
        self._by = by
        self.call.observer.note("interruption", state="paused", by=by)
        self._changed.unpark_all()

    async def speech_stopped(self, event: SpeechStopped) -> None:
        self._model_speaking = False
        self._committed = True
        if self.paused_at is None:
            await self._respond()  # an ordinary end of the caller's turn
            return
        start, end = self._speech_start_ms, event.audio_end_ms
        if start is not None and end is not None and end - start >= self.min_ms:
            await self._confirm("speech")
            await self._respond()
            return
        self._ended_short = True
        if not self.transcribed:
            await self._resume()

    async def caller_transcript(self, text: str, item_id: str | None) -> None:
        words = bool(text.strip())
        if self.paused_at is None:
            if item_id is not None and item_id == self._resumed_item:  # resumed at the deadline
                self._resumed_item = None
                if not words:
                    await self._forget(item_id)
                    return
                # words after all: a real interruption, only later than the deadline
                self.call.observer.note("interruption", state="confirmed", by=self._by, why="late")
                await self._barge_in()
                await self._respond()
            return
        if item_id is not None and self._item_id is not None and item_id != self._item_id:
            return  # a late transcript of an earlier turn says nothing about this sound
        if words:
            await self._confirm("words")
            await self._respond()
        elif self._ended_short:
            await self._resume(blank=True)

    async def response_created(self) -> None:
        """Called before the bridge records the new response, so a confirmation cancels the
        old one, not the new."""
        if self.paused_at is not None:
            await self._confirm("response")

    # -- the deadline --

    async def watch(self) -> None:
        while True:
            paused_at = self.paused_at
            if paused_at is None:
                await self._changed.park()
                continue
            with trio.move_on_at(paused_at + self.confirm_s):
                await self._changed.park()
                continue  # decided (or paused anew) before the deadline
            if self.paused_at != paused_at:
                continue
            if self._speaking():
                await self._confirm("long")  # the turn's end will ask for the response
            else:
                await self._resume()

    def _speaking(self) -> bool:
        if self._model_speaking is not None:
            return self._model_speaking
        return self._vad is not None and self._vad.speaking

    async def _confirm(self, why: str) -> None:
        self.paused_at = None
        self._changed.unpark_all()
        self.call.observer.note("interruption", state="confirmed", by=self._by, why=why)
        await self._barge_in()  # stops the paused player for good, cancels, truncates

    async def _respond(self) -> None:
        if self._send is not None:
            await self._send([_CREATE_RESPONSE])

    async def _forget(self, item_id: str | None) -> None:
        """The model keeps no record of the noise (it was not asked to answer it either)."""
        if self._send is not None and item_id is not None:
            await self._send([protocol.delete_item(item_id)])

    async def _resume(self, *, blank: bool = False) -> None:
        paused_at = self.paused_at
        self.paused_at = None
        self._changed.unpark_all()
        self.call.stats.false_interruptions += 1
        gap_ms = 0.0 if paused_at is None else (trio.current_time() - paused_at) * 1000
        self.call.observer.note("interruption", state="resumed", by=self._by, gap_ms=gap_ms)
        self.call.log.info("a false interruption (%s): the reply resumes", self._by)
        self.player.resume()
        if self._committed and (blank or not self.transcribed):
            self._resumed_item = None
            await self._forget(self._item_id)
        else:  # its transcript, still to come, says whether to forget it or confirm after all
            self._resumed_item = self._item_id


async def _nothing() -> None:
    pass


def _stay() -> None:
    pass


def _silent() -> bool:
    return False
