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

import orjson
from websockets.asyncio.server import ServerConnection, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        if not isinstance(message, str):
            continue
        packet = orjson.loads(message)
        kind = packet.get("kind") or packet.get("Kind")
        if kind != "AudioData":
            continue
        audio = packet.get("audioData") or packet.get("AudioData") or {}
        data = audio.get("data") or audio.get("Data")
        if isinstance(data, str):
            outbound = {"kind": "audioData", "audioData": {"data": data}, "stopAudio": None}
            await websocket.send(orjson.dumps(outbound).decode())


async def main(host: str, port: int) -> None:
    async with serve(echo, host, port, compression=None, max_size=2**20) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"listening on ws://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
