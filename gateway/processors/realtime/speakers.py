"""`Speakers`: whom the model hears on an unmixed stream (the `speakers` option).

Owns: the policy. `first`: the first participant heard, alone (as `echo` does). `follow`: the
participant whose raw id is the call's caller (`call.control.caller`, known when this gateway
answered the call); without it, `first`, said once in the log. `mix`: every participant,
summed time-aligned on the packets' timestamps (`gateway.audio.mix.Mixer`), each mixed frame
given to the model when due, on a packet's arrival or on the call's clock; frames too late to
align are dropped and counted (`CallStats.mix_late_frames`, `mix_waits_expired`). On a mixed
stream (no participant ids) every policy passes the audio as it is. The event log is told who
speaks: `speaker` (`participant`, `policy`) at a participant's first non-silent frame, and
again after a second of silence from them. Never: sends anything upstream itself, resamples.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import trio
from pybase64 import b64encode_as_string as b64encode

from ...acs.packets import AudioData, InboundPacket
from ...audio.mix import Mixer
from ...call.interface import Call

FIRST: Final = "first"
MIX: Final = "mix"
FOLLOW: Final = "follow"
SPEAKER_POLICIES: Final = (FIRST, MIX, FOLLOW)
QUIET_S: Final = 1.0  # silence after which a participant's next sound is a new `speaker` note


class Speakers:
    def __init__(self, call: Call, policy: str) -> None:
        self.call = call
        self.chosen: str | None = None  # first / follow: the participant the model hears
        control = call.control
        caller = None if control is None else control.caller
        if policy == FOLLOW:
            if caller:
                self.chosen = caller
            else:
                call.log.info(
                    "speakers = follow: the caller's id is unknown (the call was not answered "
                    "by this gateway); the model hears the first participant heard"
                )
                policy = FIRST
        self.policy = policy
        self.mixer = Mixer() if policy == MIX else None
        self._loud: dict[str, float] = {}  # participant -> when last heard non-silent
        self._announced: dict[str, None] = {}  # follow: participants noted as not followed

    def packets(
        self, packets: trio.abc.ReceiveChannel[InboundPacket]
    ) -> AsyncIterator[InboundPacket]:
        """What the bridge reads: the call's packets, or (`mix`) with the participants' audio
        replaced by the mixed frames (`AudioData` of no participant), each when it is due."""
        return packets if self.mixer is None else _Mixed(self, self.mixer, packets)

    def hears(self, packet: AudioData) -> bool:
        """True if this frame goes to the model (`first`, `follow`; mixed frames always)."""
        who = packet.participant_raw_id
        if who is None:
            return True
        if self.chosen is None:
            self.chosen = who
        if who != self.chosen:
            if self.policy == FOLLOW and who not in self._announced:
                self._announced[who] = None
                self.call.observer.note("speaker", participant=who, policy=self.policy, heard=False)
            return False
        if not packet.silent:
            self._spoke(who, trio.current_time())
        return True

    def mix(self, packet: AudioData, now: float) -> list[bytes]:
        """`mix`: add one participant's frame; the mixed frames due now."""
        mixer = self.mixer
        assert mixer is not None
        who = packet.participant_raw_id
        if who is None:  # a mixed stream after all: nothing to align
            return [packet.pcm]
        if not packet.silent:
            self._spoke(who, now)
        return self.count(mixer.push(who, packet.timestamp, packet.pcm, now))

    def count(self, frames: list[bytes]) -> list[bytes]:
        """Bring the mixer's counts into the call's stats (cheap: two integers)."""
        mixer = self.mixer
        assert mixer is not None
        stats = self.call.stats
        stats.mix_waits_expired = mixer.stats.waits_expired
        stats.mix_late_frames = mixer.stats.late_frames
        return frames

    def _spoke(self, who: str, now: float) -> None:
        last = self._loud.get(who)
        self._loud[who] = now
        if last is None or now - last > QUIET_S:
            self.call.observer.note("speaker", participant=who, policy=self.policy)


class _Mixed:
    """The call's packets with the audio mixed: waits for the next packet, or on the call's
    clock for the next mixed frame due, whichever comes first."""

    def __init__(
        self, speakers: Speakers, mixer: Mixer, packets: trio.abc.ReceiveChannel[InboundPacket]
    ) -> None:
        self._speakers = speakers
        self._mixer = mixer
        self._packets = packets
        self._ready: deque[InboundPacket] = deque()

    def __aiter__(self) -> _Mixed:
        return self

    async def __anext__(self) -> InboundPacket:
        mixer = self._mixer
        speakers = self._speakers
        ready = self._ready
        while not ready:
            due = mixer.due_at(trio.current_time())
            packet: InboundPacket | None = None
            with trio.move_on_at(math.inf if due is None else due):
                try:
                    packet = await self._packets.receive()
                except trio.EndOfChannel:  # ACS hung up: what the mixer still holds stays
                    speakers.call.observer.note(
                        "mix",
                        waits_expired=mixer.stats.waits_expired,
                        late_frames=mixer.stats.late_frames,
                        held_at_end=mixer.pending_frames,
                    )
                    raise StopAsyncIteration from None
            if packet is None:
                frames = speakers.count(mixer.release(trio.current_time()))
            elif type(packet) is AudioData:
                frames = speakers.mix(packet, trio.current_time())
            else:
                return packet
            for pcm in frames:
                ready.append(AudioData(pcm, b64encode(pcm), None, None, False))
        return ready.popleft()
