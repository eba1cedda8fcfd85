"""The bridged yardstick: a minimal asyncio + `websockets` realtime bridge, in the shape of
Microsoft's call-automation + OpenAI realtime samples.

    python bench/asyncio_bridge.py --model ws://127.0.0.1:PORT [--rate 24000] [--append-ms 40]
    # prints "listening on ws://HOST:PORT"

Per ACS connection: one connection to the model, opened with a `session.update`, and two
coroutines.

- The first reads ACS. Each `AudioData` packet's audio goes to the model in
  `input_audio_buffer.append` events of `--append-ms` (default 40, the gateway's batching, so
  the comparison is demanding; the samples send one event per packet: `--append-ms 20`).
- The second reads the model. Each `response.output_audio.delta` goes to ACS as it comes, as
  one `AudioData` packet in the SDK's outbound shape, with no pacing (ACS queues what it is
  sent). `input_audio_buffer.speech_started` sends stop-audio to ACS and `response.cancel`
  to the model (the benchmarks' fake model does not cancel by itself).

At 24 kHz, the model's own rate, the audio passes through as base64 and is never decoded (a
20 ms frame is 960 bytes, a multiple of 3, so frames' base64 strings join). At 16 kHz it is
resampled both ways with soxr (HQ, streaming, one resampler per direction per call, as the
gateway does). ACS's packets are read, and its connections served, by `asyncio_echo.py`'s
code. Never: anything a real deployment needs (keys, reconnects, truncation of what was not
heard, DTMF, limits, metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
import pybase64
import soxr
from asyncio_echo import audio_data, listen
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

MODEL_RATE = 24000
SESSION_UPDATE = orjson.dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": MODEL_RATE}},
                "output": {"format": {"type": "audio/pcm", "rate": MODEL_RATE}},
            },
        },
    }
).decode()
STOP_AUDIO = orjson.dumps({"kind": "stopAudio", "audioData": None, "stopAudio": {}}).decode()
CANCEL = orjson.dumps({"type": "response.cancel"}).decode()


class Resampler:
    """int16 PCM bytes in, int16 PCM bytes out, state kept between chunks."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")

    def __call__(self, pcm: bytes) -> bytes:
        out: bytes = self.stream.resample_chunk(np.frombuffer(pcm, dtype=np.int16)).tobytes()
        return out


async def from_acs(acs: ServerConnection, model: ClientConnection, rate: int, frames: int) -> None:
    """The caller's audio to the model, `frames` packets an event."""
    upsample = Resampler(rate, MODEL_RATE) if rate != MODEL_RATE else None
    batch: list[str] = []
    async for message in acs:
        if not isinstance(message, str):
            continue
        data = audio_data(orjson.loads(message))
        if data is None:
            continue
        batch.append(data)
        if len(batch) < frames:
            continue
        if upsample is None:
            audio = "".join(batch)
        else:
            pcm = b"".join(pybase64.b64decode(d) for d in batch)
            audio = pybase64.b64encode_as_string(upsample(pcm))
        batch.clear()
        await model.send('{"type":"input_audio_buffer.append","audio":"' + audio + '"}')


async def from_model(acs: ServerConnection, model: ClientConnection, rate: int) -> None:
    """The model's audio to ACS as it comes; stop-audio when the caller starts to speak."""
    downsample = Resampler(MODEL_RATE, rate) if rate != MODEL_RATE else None
    async for message in model:
        event = orjson.loads(message)
        kind = event.get("type")
        if kind in ("response.output_audio.delta", "response.audio.delta"):
            audio = event["delta"]
            if downsample is not None:
                audio = pybase64.b64encode_as_string(downsample(pybase64.b64decode(audio)))
            outbound = {"kind": "audioData", "audioData": {"data": audio}, "stopAudio": None}
            await acs.send(orjson.dumps(outbound).decode())
        elif kind == "input_audio_buffer.speech_started":
            await acs.send(STOP_AUDIO)
            await model.send(CANCEL)


def handler(
    model_url: str, rate: int, frames: int
) -> Callable[[ServerConnection], Awaitable[None]]:
    async def bridge(acs: ServerConnection) -> None:
        async with connect(model_url, compression=None, max_size=2**24) as model:
            await model.send(SESSION_UPDATE)
            reading = asyncio.create_task(from_model(acs, model, rate))
            try:
                await from_acs(acs, model, rate, frames)
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reading

    return bridge


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", required=True, help="the realtime model's ws:// URL")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--append-ms", type=int, default=40, help="caller audio per event")
    args = parser.parse_args()
    bridge = handler(args.model, args.rate, max(1, args.append_ms // 20))
    try:
        asyncio.run(listen(bridge, args.host, args.port))
    except KeyboardInterrupt:
        pass
