"""Processors for testing gateways and the simulator: `sink` and `barge_in_bot`.

    acs-media-gateway serve --processor gateway.testing.processors:sink
    acs-media-gateway serve --processor gateway.testing.processors:barge_in_bot

Owns: two small reference processors. Never: anything a production processor needs.

- `sink` reads every packet and sends nothing: a gateway that does nothing but read, the floor
  against which the load simulator is measured.
- `barge_in_bot` talks (the bundled speech clip, over and over) and stops at once when the
  caller speaks over it: `player.stop()` (stop-audio) after `loud_frames` frames in a row
  whose peak is at least `threshold`; it talks again after `resume_after_ms` of caller silence.
  It is what `simulate --barge-in-after` measures stop-audio latency against.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from functools import cache
from typing import Any

import trio

from ..acs.packets import AudioData
from ..processors import Call, Processor
from .audio import speech


def sink(options: Mapping[str, Any]) -> Processor:
    async def read_only(call: Call) -> None:
        async for _ in call.packets:
            pass

    return read_only


@cache
def _prompt(sample_rate: int) -> bytes:
    return speech(sample_rate)


def peak(pcm: bytes) -> int:
    """Largest absolute sample of PCM16 (little-endian, as on every Linux/x86/ARM host)."""
    samples = array("h", pcm[: len(pcm) // 2 * 2])
    return max(max(samples, default=0), -min(samples, default=0))


def barge_in_bot(options: Mapping[str, Any]) -> Processor:
    threshold = int(options.get("threshold", 1000))
    loud_frames = int(options.get("loud_frames", 3))
    resume_after_ms = int(options.get("resume_after_ms", 600))

    async def bot(call: Call) -> None:
        player = call.player
        if player is None or call.audio is None:
            return
        prompt = _prompt(call.audio.sample_rate)

        async def talk(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                # After a hang-up play() and drain() return at once without yielding: a
                # `while True` here would spin and freeze every call in the process.
                while not player.closed:
                    await player.play(prompt)
                    await player.drain()

        async with trio.open_nursery() as nursery:
            talking: trio.CancelScope | None = await nursery.start(talk)
            loud = quiet = 0
            async for packet in call.packets:
                if type(packet) is not AudioData:
                    continue
                if not packet.silent and peak(packet.pcm) >= threshold:
                    loud, quiet = loud + 1, 0
                else:
                    loud, quiet = 0, quiet + 1
                if talking is not None and loud >= loud_frames:
                    talking.cancel()
                    player.stop()  # barge-in: ACS drops what it has queued
                    talking = None
                elif talking is None and quiet * 20 >= resume_after_ms:
                    talking = await nursery.start(talk)
            nursery.cancel_scope.cancel()

    return bot
