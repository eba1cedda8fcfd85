"""A processor for the replica tests' gateway processes (`processor = "tests.replica_processor:
make"`): echo; key 1 hangs the call up, key 2 transfers it to `TRANSFER_TO`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.acs.packets import AudioData, DtmfData
from gateway.processors import Call, Processor

TRANSFER_TO = "+14255550199"


def make(options: Mapping[str, Any]) -> Processor:
    async def processor(call: Call) -> None:
        assert call.control is not None and call.player is not None
        async for packet in call.packets:
            if isinstance(packet, AudioData):
                await call.player.play(packet.pcm)
            elif isinstance(packet, DtmfData) and packet.tone == "1":
                await call.control.hang_up()
            elif isinstance(packet, DtmfData) and packet.tone == "2":
                await call.control.transfer(TRANSFER_TO)

    return processor
