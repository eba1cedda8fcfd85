"""`Conversation`: one model session's responses and assistant audio items as the caller heard
them, and what a barge-in tells the model.

Owns: which response is in flight (created and not yet done), how much audio of each assistant
item the model sent and whether it sent all of it, which responses were interrupted (their later
deltas are stale: `audio` says to drop them), and, when the caller barges in, the client events
that make the model's record match what the caller heard: `response.cancel` for the response
in flight, and for each item not fully heard `conversation.item.truncate` to the audio released
to the caller, or `conversation.item.delete` if none was. At most `_ITEMS_KEPT` items and as
many interrupted responses are remembered, the oldest forgotten first.
Never: wire spellings (its events are built with `protocol`'s client-event functions), sockets,
tasks, clocks, or the player: how much of an item was released is asked of `heard_ms`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from ...acs.packets import pcm_ms
from .protocol import MODEL_RATE, AudioDelta, cancel_response, delete_item, truncate_item

_ITEMS_KEPT: Final = 16  # assistant items remembered for truncation (older ones were heard)


@attrs.define(slots=True)
class _Item:
    content_index: int
    received_ms: float = 0.0  # model audio received for it
    done: bool = False  # the model sent all of its audio


class Conversation:
    """One session's responses and assistant audio items, for barge-in.

    `heard_ms(item_id)` is the player's count of that item's audio released to the caller (the
    bridge passes `Player.released_ms`).
    """

    def __init__(self, heard_ms: Callable[[str], float], model_rate: int = MODEL_RATE) -> None:
        self._heard_ms = heard_ms
        self._rate = model_rate  # the model's PCM16
        self.response_id: str | None = None  # created and not yet done
        self._cancelled: str | None = None  # the response we already cancelled
        self._interrupted: dict[str, None] = {}  # responses whose later audio is stale (ordered)
        self._items: dict[str, _Item] = {}

    @property
    def responding(self) -> bool:
        return self.response_id is not None

    def response_created(self, response_id: str | None) -> None:
        self.response_id = response_id
        for item_id in [i for i, item in self._items.items() if self._fully_heard(i, item)]:
            del self._items[item_id]

    def response_done(self, response_id: str | None) -> None:
        if response_id == self.response_id or response_id is None:
            self.response_id = None

    def audio(self, delta: AudioDelta, n_bytes: int) -> bool:
        """Count a delta; False if it belongs to an interrupted response (drop it)."""
        if delta.response_id in self._interrupted:
            return False
        item = self._items.get(delta.item_id)
        if item is None:
            item = self._items[delta.item_id] = _Item(delta.content_index)
            if len(self._items) > _ITEMS_KEPT:
                del self._items[next(iter(self._items))]
        item.received_ms += pcm_ms(n_bytes, self._rate)
        return True

    def audio_done(self, item_id: str) -> None:
        item = self._items.get(item_id)
        if item is not None:
            item.done = True

    def _fully_heard(self, item_id: str, item: _Item) -> bool:
        # 1 ms of slack: resampling may round the item's length by a sample
        return item.done and self._heard_ms(item_id) + 1 >= item.received_ms

    def interrupt(self) -> list[str]:
        """The caller barged in: the client events that make the model's record match what
        the caller heard (cancel the response in flight; truncate each item to what was
        released, or delete it if none was)."""
        events = []
        if self.response_id is not None and self._cancelled != self.response_id:
            self._cancelled = self.response_id
            self._interrupted[self.response_id] = None
            if len(self._interrupted) > _ITEMS_KEPT:
                del self._interrupted[next(iter(self._interrupted))]
            events.append(cancel_response(self.response_id))
        for item_id, item in self._items.items():
            if self._fully_heard(item_id, item):
                continue
            heard = int(self._heard_ms(item_id))  # never claim more than was released
            if heard <= 0:
                events.append(delete_item(item_id))
            else:
                events.append(truncate_item(item_id, item.content_index, heard))
        self._items.clear()
        return events
