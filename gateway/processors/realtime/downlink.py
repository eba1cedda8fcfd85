"""The model's audio on its way to the caller: queued as it came, resampled, played.

Owns: the queue between the upstream reader and the player (bounded in deltas and in seconds
of audio), the feeder task that drains it into the player, which queued audio is stale (a
barge-in makes all of it so), and the model -> caller resampler's state. Never: parsing events,
which response's audio is current (the bridge's `Conversation` says, before queueing), sockets.

Why a queue and a feeder: `Player.play()` blocks while the player's queue is full, and the
upstream reader must stay free to read a barge-in. So the reader queues each delta as the model
sent it (base64, not decoded) and goes on; the feeder decodes, resamples and plays. The reader
waits only when `PENDING_AUDIO_S` of model audio (or `PENDING_DELTAS` deltas) wait for the
player: the rest of a reply streamed that far ahead of the caller's ears stays in the model's
socket, so one call holds at most ~8 MB of it, whatever size the model's deltas are. The price,
for such a reply only: the model's `speech_started` is read once the audio sent before it has
been taken (the local VAD, which hears the caller directly, still stops the bot at once; then
the rest is discarded as fast as it is read).
"""

from __future__ import annotations

from typing import Final

import trio

from ...audio.resample import StreamResampler
from ...call.interface import CallStats
from ...call.player import Player
from . import protocol

PENDING_DELTAS: Final = 4096  # model audio deltas queued for the player (each ~20-200 ms)
PENDING_AUDIO_S: Final = 120  # and seconds of model audio queued for it, at most
PENDING_AUDIO_BYTES: Final = PENDING_AUDIO_S * protocol.MODEL_RATE * 2  # decoded PCM16

# (generation, item id, base64 audio; None: the item's audio is complete)
Entry = tuple[int, str, str | None]


class Downlink:
    """`await queue(item_id, audio)` from the reader, `feed()` as a task of the call, and
    `discard()` at a barge-in (the player has been stopped): nothing queued before it plays."""

    def __init__(self, player: Player, rate: int, stats: CallStats) -> None:
        self.player = player
        self.stats = stats  # upstream_audio_discarded
        self.to_caller = StreamResampler(protocol.MODEL_RATE, rate)
        self.generation = 0  # goes up at each barge-in: what was queued before is stale
        self._send, self._receive = trio.open_memory_channel[Entry](PENDING_DELTAS)
        self._bytes = 0  # decoded bytes of the audio queued
        self._room = trio.lowlevel.ParkingLot()  # the reader waits here past the cap

    def discard(self) -> None:
        self.generation += 1

    async def queue(self, item_id: str, audio: str | None) -> None:
        """Hand a delta (`audio` None: the item's audio is complete) to the feeder; past the
        cap, wait for the player to take some, which leaves the rest in the model's socket.
        A barge-in while it waits makes this delta stale too: its generation is taken first."""
        entry = (self.generation, item_id, audio)
        if audio is not None:
            while self._bytes >= PENDING_AUDIO_BYTES:
                await self._room.park()
            self._bytes += protocol.audio_bytes(audio)
        try:
            self._send.send_nowait(entry)
        except trio.WouldBlock:
            await self._send.send(entry)

    async def feed(self) -> None:
        player = self.player
        generation = 0
        async for gen, item_id, audio in self._receive:
            if audio is not None:  # room for the reader, if it waits for some
                self._bytes -= protocol.audio_bytes(audio)
                if self._bytes < PENDING_AUDIO_BYTES:
                    self._room.unpark_all()
            if gen != self.generation:
                if audio is not None:
                    self.stats.upstream_audio_discarded += protocol.audio_bytes(audio)
                continue
            if gen != generation:  # first audio after a barge-in: the resampler's tail is stale
                self.to_caller.reset()
                generation = gen
            if audio is None:  # the item's audio is complete
                tail = self.to_caller.flush()
                if tail:
                    await player.play(tail, utterance=item_id)
                player.flush()
                continue
            pcm = self.to_caller.process(protocol.decode_audio(audio))
            if pcm:
                await player.play(pcm, utterance=item_id)
