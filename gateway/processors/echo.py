"""`echo`: the embedded default processor. Plays the caller's audio straight back.

In mixed mode every frame is echoed. In unmixed mode (frames tagged with `participantRawID`)
only the first participant heard is echoed, so the echoed stream stays one real-time stream.
Options: `participant` (str) echoes that raw id instead of the first one heard.
Silent frames are echoed too, so the round trip stays byte-exact and real-time.

Echo hears the caller's audio inline (`audio_handler`): each frame is played from the call's
receive task as it is read, one task switch and one channel hop fewer per frame than reading
`call.packets` (docs/architecture.md, "Inline audio handlers"). A frame that finds the
player's queue full (ACS has stopped reading) is dropped and counted. Its coroutine still
plays any audio that reaches `call.packets`, so it echoes the same when called by another
processor that does not pass the handler on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..acs.packets import AudioData
from . import AudioHandler, Call, Processor


def make(options: Mapping[str, Any]) -> Processor:
    unknown = set(options) - {"participant"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; echo takes 'participant'")
    chosen = options.get("participant")
    if chosen is not None and not isinstance(chosen, str):
        raise ValueError("participant must be a string (a participant raw id)")
    return Echo(chosen)


class Speaker:
    """Whose frames a call echoes: the chosen raw id, or the first one heard."""

    __slots__ = ("raw_id", "chosen")  # one per call

    def __init__(self, chosen: str | None) -> None:
        self.raw_id = chosen
        self.chosen = chosen is not None

    def is_speaking(self, frame: AudioData) -> bool:
        if not self.chosen:
            self.raw_id, self.chosen = frame.participant_raw_id, True
        return frame.participant_raw_id == self.raw_id


@attrs.frozen
class Echo:
    """The echo processor; `participant`: the raw id to echo (None: the first heard)."""

    participant: str | None = None

    def audio_handler(self, call: Call) -> AudioHandler | None:
        player = call.player
        if player is None:  # a transcription-only stream has no audio
            return None
        speaker = Speaker(self.participant)

        def hear(frame: AudioData) -> bool:
            return not speaker.is_speaking(frame) or player.play_nowait(frame.pcm)

        return hear

    async def __call__(self, call: Call) -> None:
        player = call.player
        if player is None:  # a transcription-only stream has nothing to echo
            async for _ in call.packets:
                pass
            return
        speaker = Speaker(self.participant)
        async for packet in call.packets:
            if type(packet) is AudioData and speaker.is_speaking(packet):
                await player.play(packet.pcm)
            # not held while waiting for the next one: the frame's wire text (~1 KB) and PCM
            del packet
