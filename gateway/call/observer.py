"""`CallObserver`: what a call tells whoever keeps its record (recording, event log, latency).

Owns: the points in a call's life worth recording, as plain method calls with the call's clock
(`trio.current_time()`) passed in or read by the observer. Never: knows what is done with them
(`gateway.records` implements it), awaits, or raises into the call: an observer that fails
must fail on its own side.

The hot path: `caller_audio` once per inbound audio frame and `bot_audio` once per release of
outbound frames; everything else is per turn or rarer. `NO_OBSERVER` answers every call with
nothing, for calls that keep no record.

Event kinds given to `note` (the fields each carries):
- `speech_started` (`by`: "model", "vad", or "dtmf" for a key pressed): the caller started
  speaking (a barge-in if the bot was audible).
- `turn_ended` (`by`: "model" or "vad"): the caller's turn ended (the model's `speech_stopped`,
  or the local VAD's end of an utterance).
- `transcript` (`who`: "caller" or "bot", `text`).
- `tool_call` (`name`, `call_id`, `arguments`), `tool_result` (`name`, `call_id`, `outcome`:
  "ok", "error" or "timeout", `ms`), `reconnect` (`reason`), `session` (`state`: "open"),
  `greeting` (the bot was asked to speak first).
- `interruption` (`state`: "paused", "confirmed" (`why`) or "resumed" (`gap_ms`); `by`): a
  suspected barge-in paused the bot, then proved real or false.
- `speaker` (`participant`, `policy`): who spoke on an unmixed stream (`heard=False`: one the
  model does not hear); `mix` (`waits_expired`, `late_frames`, `held_at_end`): the mixer's
  counts when the call ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from ..acs.packets import AudioData, InboundPacket

if TYPE_CHECKING:
    from .interface import Call
    from .outcome import CallOutcome


class CallObserver(Protocol):
    def started(self, call: Call, now: float) -> None:
        """The first metadata came: the call's clock starts at `now`."""

    def caller_audio(self, packet: AudioData, now: float) -> None:
        """An inbound audio frame, read at `now` (before any queue could drop it)."""

    def caller_packet(self, packet: InboundPacket, now: float) -> None:
        """Any other inbound packet (DTMF, transcription), read at `now`."""

    def bot_audio(self, frames: list[bytes], start: float) -> None:
        """Frames released towards ACS, played back to back from playout time `start`."""

    def bot_cut(self, now: float) -> None:
        """Stop-audio goes out at `now`: ACS drops what it had not yet played."""

    def note(self, kind: str, **fields: object) -> None:
        """An event of the call (see the module docstring), at `trio.current_time()`."""

    def ended(self, outcome: CallOutcome, now: float) -> None:
        """The call is over; nothing more will be observed."""


class NoObserver:
    """Keeps no record: every method does nothing."""

    __slots__ = ()

    def started(self, call: Call, now: float) -> None:
        pass

    def caller_audio(self, packet: AudioData, now: float) -> None:
        pass

    def caller_packet(self, packet: InboundPacket, now: float) -> None:
        pass

    def bot_audio(self, frames: list[bytes], start: float) -> None:
        pass

    def bot_cut(self, now: float) -> None:
        pass

    def note(self, kind: str, **fields: object) -> None:
        pass

    def ended(self, outcome: CallOutcome, now: float) -> None:
        pass


NO_OBSERVER: Final[CallObserver] = NoObserver()
