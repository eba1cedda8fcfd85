"""`echo`: the embedded default processor. Plays the caller's audio straight back.

In mixed mode every frame is echoed. In unmixed mode (frames tagged with `participantRawID`)
only the first participant heard is echoed, so the echoed stream stays one real-time stream.
Options: `participant` (str) echoes that raw id instead of the first one heard.
Silent frames are echoed too, so the round trip stays byte-exact and real-time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..acs.packets import AudioData
from . import Call, Processor


def make(options: Mapping[str, Any]) -> Processor:
    unknown = set(options) - {"participant"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; echo takes 'participant'")
    chosen = options.get("participant")
    if chosen is not None and not isinstance(chosen, str):
        raise ValueError("participant must be a string (a participant raw id)")

    async def echo(call: Call) -> None:
        player = call.player
        if player is None:  # a transcription-only stream has nothing to echo
            async for _ in call.packets:
                pass
            return
        speaker = chosen
        first = True
        async for packet in call.packets:
            if type(packet) is AudioData:
                if first and speaker is None:
                    speaker = packet.participant_raw_id
                first = False
                if packet.participant_raw_id == speaker:
                    await player.play(packet.pcm)
            # not held while waiting for the next one: the frame's wire text (~1 KB) and PCM
            del packet

    return echo
