"""The processor simulate's control mode runs: echo, and call control on a key press.

Owns: what the bot does when the simulated caller presses a key: `#` hangs the call up, `*`
transfers it to `transfer_to`, through `call.control` (the gateway answered the call). Every
other frame is echoed, so the caller's audio comes back byte for byte. Never: acts without a
key press, or on a call without a control handle (the key is then ignored).

A gateway under `simulate --control --gateway URL` runs it as its processor:

    processor = "gateway.simulate.control_bot:make"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..acs.packets import AudioData, DtmfData
from ..processors import Call, Processor

HANG_UP: Final = "#"
TRANSFER: Final = "*"
TRANSFER_TO: Final = "+14255550199"  # where the bot hands calls over unless told


def make(options: Mapping[str, Any]) -> Processor:
    unknown = set(options) - {"transfer_to"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; control_bot takes 'transfer_to'")
    transfer_to = str(options.get("transfer_to", TRANSFER_TO))

    async def control_bot(call: Call) -> None:
        player = call.player
        async for packet in call.packets:
            if type(packet) is AudioData:
                if player is not None:
                    await player.play(packet.pcm)
            elif isinstance(packet, DtmfData) and call.control is not None:
                if packet.tone in (HANG_UP, "pound"):
                    await call.control.hang_up()
                    return
                if packet.tone in (TRANSFER, "asterisk"):
                    await call.control.transfer(transfer_to)
                    return

    return control_bot
