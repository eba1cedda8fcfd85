"""The model's audio on its way to the caller: queued as it came, resampled, played.

Owns: the queue between the upstream reader and the player (bounded in deltas and in seconds
of audio), the feeder task that drains it into the player, which queued audio is stale (a
barge-in makes all of it so), and the model -> caller resampler's state. Never: parsing events,
which response's audio is current (the bridge's `Conversation` says, before queueing), sockets.

Why a queue and a feeder: `Player.play()` blocks while the player's queue is full, and the
upstream reader must stay free to read a barge-in. So when the feeder is busy, or the player
has no room for a delta, the reader queues the delta as the model sent it (base64, not decoded)
and goes on; the feeder decodes, resamples and plays. Otherwise, which is most of the time (the
player holds seconds), the reader plays the delta itself: it cannot wait, nothing is ahead of
it, and the caller's audio leaves without a hop to the feeder task (a task switch per delta,
and the first audio of a reply one round of the event loop sooner). The reader
waits only when `PENDING_AUDIO_S` of model audio (or `PENDING_DELTAS` deltas) wait for the
player: the rest of a reply streamed that far ahead of the caller's ears stays in the model's
socket, so one call holds at most ~8 MB of it, whatever size the model's deltas are. The price,
for such a reply only: the model's `speech_started` is read once the audio sent before it has
been taken (the local VAD, which hears the caller directly, still stops the bot at once; then
the rest is discarded as fast as it is read).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Final

import trio

from ...audio.resample import StreamResampler
from ...call.interface import CallStats
from ...call.player import Player
from . import protocol

PENDING_DELTAS: Final = 4096  # model audio deltas queued for the player (each ~20-200 ms)
PENDING_AUDIO_S: Final = 120  # and seconds of 24 kHz model audio queued for it, at most
PENDING_AUDIO_BYTES: Final = PENDING_AUDIO_S * protocol.MODEL_RATE * 2  # decoded PCM16

# (generation, item id, base64 audio; None: the item's audio is complete)
Entry = tuple[int, str, str | None]

# Output the model -> caller resampler may add to a delta's own length: what it held back
# (see gateway.audio.resample). The reader plays a delta itself only with this much room spare.
HELD_BACK_MS: Final = 100


class Downlink:
    """`await queue(item_id, audio)` from the reader, `feed()` as a task of the call, and
    `discard()` at a barge-in (the player has been stopped): nothing queued before it plays."""

    def __init__(
        self,
        player: Player,
        rate: int,
        stats: CallStats,
        malformed: Callable[[str], None],
        model_rate: int = protocol.MODEL_RATE,
    ) -> None:
        self.player = player
        self.stats = stats  # upstream_audio_discarded
        self.malformed = malformed  # counts and logs what the model sent that is not audio
        self.to_caller = StreamResampler(model_rate, rate)
        self.generation = 0  # goes up at each barge-in: what was queued before is stale
        self._converting = 0  # the generation the resampler's state belongs to
        self._send, self._receive = trio.open_memory_channel[Entry](PENDING_DELTAS)
        self._pending = 0  # entries queued or being fed: while any, the reader may not play
        self._bytes = 0  # decoded bytes of the audio queued
        self._held_back = HELD_BACK_MS * rate * 2 // 1000
        # A delta that ends on half a sample: its last byte, and its item, wait for the next
        # delta (PCM16 is whole samples; one stray byte must not cost the call).
        self._odd: tuple[str, bytes] | None = None
        self._room = trio.lowlevel.ParkingLot()  # the reader waits here past the cap

    def discard(self) -> None:
        self.generation += 1

    async def queue(self, item_id: str, audio: str | None) -> None:
        """Play a delta (`audio` None: the item's audio is complete) now if nothing waits
        ahead of it and the player has room; else hand it to the feeder, and past the cap wait
        for the player to take some, which leaves the rest in the model's socket. A barge-in
        while it waits makes this delta stale too: its generation is taken first."""
        n_bytes = 0 if audio is None else protocol.audio_bytes(audio)
        if not self._pending and self._room_for(n_bytes):  # nothing ahead, and it cannot wait
            await self._play(item_id, audio)
            return
        entry = (self.generation, item_id, audio)
        self._pending += 1
        counted = 0
        try:
            while n_bytes and self._bytes >= PENDING_AUDIO_BYTES:
                await self._room.park()
            self._bytes += n_bytes
            counted = n_bytes
            try:
                self._send.send_nowait(entry)
            except trio.WouldBlock:
                await self._send.send(entry)
        except BaseException:  # cancelled (a rollover cancels the reader): it was never queued
            self._bytes -= counted
            self._pending -= 1
            raise

    def _room_for(self, n_bytes: int) -> bool:
        """The player takes a delta of `n_bytes` of model audio (0: the item's held-back tail)
        without waiting."""
        resampled = n_bytes * self.to_caller.dst_rate // self.to_caller.src_rate
        return resampled + self._held_back <= self.player.playout.space_bytes

    async def _play(self, item_id: str, audio: str | None) -> None:
        """Decode, resample and play one entry of the current generation, in order."""
        player = self.player
        if self._converting != self.generation:  # a barge-in since: the resampler's tail is stale
            self.to_caller.reset()
            self._converting = self.generation
            self._drop_odd()
        if audio is None:  # the item's audio is complete
            self._drop_odd()
            tail = self.to_caller.flush()
            if tail:
                await player.play(tail, utterance=item_id)
            player.flush()
            return
        try:
            pcm = protocol.decode_audio(audio)
        except binascii.Error:  # not base64: nothing of it can play, and the call goes on
            self.malformed(f"audio that is not base64 (item {item_id!r})")
            return
        pcm = self.to_caller.process(self._whole_samples(item_id, pcm))
        if pcm:
            await player.play(pcm, utterance=item_id)

    def _whole_samples(self, item_id: str, pcm: bytes) -> bytes:
        odd = self._odd
        if odd is not None:
            if odd[0] == item_id:
                pcm = odd[1] + pcm
                self._odd = None
            else:
                self._drop_odd()
        if len(pcm) % 2:
            self._odd = (item_id, pcm[-1:])
            pcm = pcm[:-1]
        return pcm

    def _drop_odd(self) -> None:
        """Half a sample no delta completed: counted with the audio that never plays."""
        if self._odd is not None:
            self._odd = None
            self.stats.upstream_audio_discarded += 1

    async def feed(self) -> None:
        async for gen, item_id, audio in self._receive:
            if audio is not None:  # room for the reader, if it waits for some
                self._bytes -= protocol.audio_bytes(audio)
                if self._bytes < PENDING_AUDIO_BYTES:
                    self._room.unpark_all()
            try:
                if gen == self.generation:
                    await self._play(item_id, audio)
                elif audio is not None:
                    self.stats.upstream_audio_discarded += protocol.audio_bytes(audio)
            finally:
                self._pending -= 1
