"""The call's conversation as the caller lived it, kept to re-create it in a new model session.

Owns: one call's record of turns (what the caller said, from the model's transcripts of their
audio; what the caller HEARD of the bot; what the model was told in words: the caller's key
presses, and each tool's result as a system note), its bounds (`max_items`, `max_bytes` of text: the
oldest turns are dropped and counted, and a system note says so), and writing it out as
`conversation.item.create` events.
Never: sockets, tasks, clocks, or asking the model for anything.

What the caller heard of a reply: the bot's output transcript, cut at the fraction of the
item's audio that was released to the caller (`heard_ms`, the player's count) out of all the
audio the model produced for it, back to a word boundary, and marked with a trailing "…".
A reply none of which was heard is left out, as barge-in deletes it from the model's record.
The fraction is fixed ("settled") when the next response starts, at barge-in's truncation, and
when the history is written out, so the player may forget old items.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
import orjson

from ...acs.packets import pcm_ms
from .protocol import (
    GA,
    MODEL_RATE,
    AudioDelta,
    ResponseCreated,
    ServerEvent,
    SpeechStarted,
    Transcript,
    audio_bytes,
)

CUT_MARK: Final = "…"  # a reply the caller interrupted ends with this
_FULLY_HEARD: Final = 0.995  # heard this much of an item's audio: all of its words were heard


@attrs.define(slots=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str = ""
    audio_ms: float = 0.0  # assistant: all the audio the model produced for the item
    heard: float | None = None  # assistant: fraction heard, once settled (None: not yet)

    @property
    def size(self) -> int:
        return len(self.text.encode())


class History:
    """One call's remembered turns, oldest first, keyed by the model's item ids.

    `see(event)` is fed every parsed model event; `events(dialect)` writes the remembered turns
    for a new session. `dropped` counts turns forgotten to stay within the bounds."""

    def __init__(
        self,
        heard_ms: Callable[[str], float],
        *,
        max_items: int,
        max_bytes: int,
        on_drop: Callable[[], None] = lambda: None,
        model_rate: int = MODEL_RATE,
    ) -> None:
        self._heard_ms = heard_ms
        self._rate = model_rate  # the model's PCM16
        self._on_drop = on_drop
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.turns: dict[str, Turn] = {}
        self.bytes = 0
        self.dropped = 0
        self._unsettled: dict[str, Turn] = {}  # assistant turns whose heard part may still grow
        self._told = 0

    def see(self, event: ServerEvent) -> None:
        kind = type(event)
        if kind is AudioDelta:
            assert isinstance(event, AudioDelta)
            turn = self.turns.get(event.item_id)
            if turn is None:
                turn = self._add(event.item_id, "assistant")
                self._unsettled[event.item_id] = turn
            turn.audio_ms += pcm_ms(audio_bytes(event.audio), self._rate)
        elif kind is SpeechStarted:
            assert isinstance(event, SpeechStarted)
            if event.item_id is not None and event.item_id not in self.turns:
                self._add(event.item_id, "user")  # its place in the order; words come later
        elif kind is Transcript:
            assert isinstance(event, Transcript)
            self._transcript(event)
        elif kind is ResponseCreated:
            self.settle()  # earlier replies are over: played out, or stopped by a barge-in

    def told(self, role: str, text: str) -> None:
        """A turn the gateway gave the model in words (`role` "user" or "system"), kept as is."""
        self._told += 1
        turn = self._add(f"_told_{self._told}", role)
        turn.text = text
        self.bytes += turn.size
        self._trim()

    def settle(self) -> None:
        """Fix how much of each earlier reply was heard (the player's count now)."""
        for item_id, turn in self._unsettled.items():
            if turn.audio_ms > 0:
                turn.heard = min(1.0, self._heard_ms(item_id) / turn.audio_ms)
            else:
                turn.heard = 0.0
        self._unsettled.clear()

    def events(self, dialect: str) -> list[str]:
        """`conversation.item.create` for each remembered turn, oldest first."""
        self.settle()
        out = []
        if self.dropped:  # so the model knows it is not the start of the call
            note = f"(The first {self.dropped} turns of this call are left out.)"
            content = {"type": "input_text", "text": note}
            item = {"type": "message", "role": "system", "content": [content]}
            out.append(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
        for turn in self.turns.values():
            text = heard_text(turn)
            if not text:
                continue
            if turn.role != "assistant":
                content = {"type": "input_text", "text": text}
            else:
                content = {"type": "output_text" if dialect == GA else "text", "text": text}
            item = {"type": "message", "role": turn.role, "content": [content]}
            out.append(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
        return out

    def _add(self, item_id: str, role: str) -> Turn:
        turn = self.turns[item_id] = Turn(role)
        self._trim()
        return turn

    def _transcript(self, event: Transcript) -> None:
        role = "user" if event.who == "caller" else "assistant"
        item_id = event.item_id or f"_{len(self.turns)}_{role}"
        turn = self.turns.get(item_id)
        if turn is None:
            turn = self._add(item_id, role)
            if role == "assistant":
                self._unsettled[item_id] = turn  # heard only if its audio comes and is played
        self.bytes += len(event.text.encode()) - turn.size
        turn.text = event.text
        self._trim()

    def _trim(self) -> None:
        while self.turns and (len(self.turns) > self.max_items or self.bytes > self.max_bytes):
            item_id = next(iter(self.turns))
            turn = self.turns.pop(item_id)
            self._unsettled.pop(item_id, None)
            self.bytes -= turn.size
            self.dropped += 1
            self._on_drop()


def heard_text(turn: Turn) -> str:
    """The words of `turn` the caller heard (all of a caller's own)."""
    text = turn.text.strip()
    if turn.role == "user" or turn.heard is None or turn.heard >= _FULLY_HEARD:
        return text
    cut = int(len(text) * turn.heard)
    if cut <= 0:
        return ""
    if cut < len(text) and not text[cut].isspace():
        space = text.rfind(" ", 0, cut)
        cut = space if space > 0 else cut  # one long word: keep the heard part of it
    heard = text[:cut].rstrip(" ,;:")
    return heard + CUT_MARK if heard else ""
