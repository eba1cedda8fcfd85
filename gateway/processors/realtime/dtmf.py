"""DTMF key presses told to the model in words, so an agent can run menus and take numbers.

Owns: collecting the caller's key presses (keys pressed less than `wait` seconds apart make one
message: "The caller pressed 1, 2, 3 and #.") and handing each message to the bridge, which
sends it as a user text item and asks for a response. Tones are spelled as ACS sends them,
characters or words ("pound", "asterisk"); the model reads the characters. At most `MAX_KEYS`
presses wait; more are dropped and logged (a stuck key, not a caller). Never: the model's wire
spelling (`protocol`), or stopping the bot's audio (the bridge does, at the press).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

MAX_KEYS: Final = 64  # presses waiting to be told, and the most in one message
_WORDS: Final = {"pound": "#", "hash": "#", "asterisk": "*", "star": "*"}


def key(tone: str) -> str:
    """A tone as the caller's keypad shows it."""
    return _WORDS.get(tone.lower(), tone)


def sentence(keys: list[str]) -> str:
    """What the model is told."""
    if len(keys) == 1:
        return f"The caller pressed {keys[0]}."
    return f"The caller pressed {', '.join(keys[:-1])} and {keys[-1]}."


class DtmfRelay:
    """Key presses in (`press`, never blocks), messages out (`run`, a task of the bridge)."""

    def __init__(self, wait: float, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.wait = wait
        self.log = log
        self._presses, self._pressed = trio.open_memory_channel[str](MAX_KEYS)

    def press(self, tone: str) -> None:
        try:
            self._presses.send_nowait(key(tone))
        except trio.WouldBlock:
            self.log.warning("DTMF %r not told to the model: %d presses wait", tone, MAX_KEYS)

    async def run(self, tell: Callable[[str], Awaitable[None]]) -> None:
        """Forever: wait for a press, collect the ones that follow it closely, tell them."""
        async for first in self._pressed:
            keys = [first]
            while len(keys) < MAX_KEYS:
                with trio.move_on_after(self.wait) as quiet:
                    keys.append(await self._pressed.receive())
                if quiet.cancelled_caught:
                    break
            await tell(sentence(keys))
