"""`realtime`: bridge each call to a realtime speech-to-speech model (OpenAI Realtime protocol).

Providers: OpenAI, Azure OpenAI (GA and preview URL forms), Azure AI Voice Live; options in
`[processors.realtime]` (see `options`, and docs/realtime.md).
`protocol` is the sans-IO wire, `conversation` what a barge-in tells the model, `bridge` the
per-call async part; `tools` (with `tool_schema` and `tool_calls`) the function tools, `dtmf`
key presses told to the model.
`tool` marks a user's function as a tool (optional: type hints are enough).
Needs the `realtime` extra (soxr, numpy) for 16 kHz calls, and `vad` for `local_vad`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .. import AudioHandler, Call, Processor
from .bridge import Bridge
from .options import RealtimeOptions, parse_options
from .speakers import MIX
from .tool_schema import tool
from .tools import Toolbox

__all__ = ["Bridge", "Realtime", "RealtimeOptions", "make", "parse_options", "tool"]


def make(options: Mapping[str, Any]) -> Processor:
    """The realtime processor, built from `[processors.realtime]` (bad options raise here)."""
    parsed = parse_options(options)
    toolbox = Toolbox.from_options(  # the user's tools are imported now, not at the first call
        parsed.tools, parsed.call_tools, parsed.transfer_targets, parsed.tool_timeout_ms
    )
    try:
        import numpy  # noqa: F401
        import soxr  # noqa: F401
    except ImportError:
        raise ConfigError(
            "processors.realtime: resampling needs soxr and numpy: "
            "pip install 'acs-media-gateway[realtime]'"
        ) from None
    if parsed.local_vad:
        try:
            import webrtcvad  # noqa: F401
        except ImportError:
            raise ConfigError(
                "processors.realtime: local_vad needs webrtcvad: "
                "pip install 'acs-media-gateway[vad]'"
            ) from None

    return Realtime(parsed, toolbox)


class Realtime:
    """The processor: a `Bridge` per call. It hears the caller's audio inline (the call's
    receive task gives each frame to `Bridge.hear`), except with `speakers = "mix"`, whose
    mixer releases frames on the call's clock in the processor's own task."""

    def __init__(self, options: RealtimeOptions, toolbox: Toolbox) -> None:
        self.options = options
        self.toolbox = toolbox
        # The call's handler and its coroutine start in either order: whichever asks first
        # makes the call's bridge, and the other finds it here while the first holds it.
        # Weak values: a bridge leaves with the last task that holds it (a bridge refers to
        # its call, so a table keyed weakly by the call would keep both forever).
        self._bridges: weakref.WeakValueDictionary[int, Bridge] = weakref.WeakValueDictionary()

    def audio_handler(self, call: Call) -> AudioHandler | None:
        if call.player is None or self.options.speakers == MIX:
            return None
        return self._bridge(call).hear

    async def __call__(self, call: Call) -> None:
        if call.player is None:  # a transcription-only stream: nothing to bridge
            call.log.warning("realtime: the stream carries no audio; nothing to bridge")
            async for _ in call.packets:
                pass
            return
        await self._bridge(call).run()

    def _bridge(self, call: Call) -> Bridge:
        bridge = self._bridges.get(id(call))
        if bridge is None:
            bridge = self._bridges[id(call)] = Bridge(call, self.options, self.toolbox)
        return bridge
