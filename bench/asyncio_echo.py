"""The yardstick: a minimal asyncio + `websockets` ACS echo server, as Microsoft's samples build it.

    python bench/asyncio_echo.py --port 0     # prints "listening on ws://HOST:PORT"

One coroutine per connection (`async for message in websocket`), each text message parsed as
JSON; an `AudioData` packet's audio goes straight back in the SDK's outbound shape
(`{"kind":"audioData","audioData":{"data":...},"stopAudio":null}`); everything else is ignored.
It is deliberately lean so the comparison is demanding: orjson rather than `json`, the base64
passed through undecoded (the gateway's echo does the same), no pacing, no metrics, no limits.
Never: anything a real deployment needs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve


def audio_data(packet: dict[str, Any]) -> str | None:
    """An `AudioData` packet's base64 audio (either casing ACS uses); None for other packets."""
    if (packet.get("kind") or packet.get("Kind")) != "AudioData":
        return None
    audio = packet.get("audioData") or packet.get("AudioData") or {}
    data = audio.get("data") or audio.get("Data")
    return data if isinstance(data, str) else None


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        if not isinstance(message, str):
            continue
        data = audio_data(orjson.loads(message))
        if data is not None:
            outbound = {"kind": "audioData", "audioData": {"data": data}, "stopAudio": None}
            await websocket.send(orjson.dumps(outbound).decode())


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]], host: str, port: int
) -> None:
    """Serve `handler` per connection until killed; says where on stderr, as the benchmarks
    expect."""
    async with serve(handler, host, port, compression=None, max_size=2**20) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"listening on ws://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(listen(echo, args.host, args.port))
    except KeyboardInterrupt:
        pass
