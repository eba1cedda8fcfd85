"""Microseconds per frame through the WebSocket layer: receiving one masked ~1 KB AudioData
text frame (as ACS sends it) and sending one audio message, at each level: the sans-IO
connection, the connection plus the codec, and the Trio adapter over a stream that never waits.
Run: python bench/wire_frames.py (medians of 7 runs of 20,000)."""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pieces import FRAME, PCM  # noqa: E402  (the frame bench/pieces.py measures)

from gateway.acs import codec  # noqa: E402
from gateway.call.interface import CallStats  # noqa: E402
from gateway.wire.connection import Connection  # noqa: E402
from gateway.wire.websocket import ServerWebSocket  # noqa: E402

N = 20000
METADATA = '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000}}'


def per_call_us(fn: Callable[[], object]) -> float:
    return (
        statistics.median(timeit.repeat(fn, number=N, repeat=7, timer=time.process_time)) / N * 1e6
    )


async def per_await_us(step: Callable[[], Awaitable[object]]) -> float:
    runs = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(N):
            await step()
        runs.append((time.process_time() - start) / N * 1e6)
    return statistics.median(runs)


class EndlessStream(trio.abc.Stream):
    """Every read returns one frame; every write is taken at once."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return FRAME

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def send_nowait(self, data: bytes) -> bytes:
        return b""

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def adapter() -> None:
    ws = ServerWebSocket(EndlessStream(), max_message_bytes=65536)
    decoder = codec.InboundDecoder()
    decoder.decode(METADATA)

    async def receive() -> None:
        for message in await ws.receive_messages():
            decoder.decode(message)

    async def send() -> None:
        await ws.send_messages([codec.encode_audio(PCM)])

    sink = ws.direct_sink(codec.encode_audio, codec.STOP_AUDIO_MESSAGE, CallStats())
    assert sink is not None
    print(f"in:  ServerWebSocket.receive_messages + decode {await per_await_us(receive):6.2f} us")
    print(f"out: ServerWebSocket.send_messages(encode)     {await per_await_us(send):6.2f} us")
    direct = per_call_us(lambda: sink.ready() and sink.send([PCM]))
    print(f"out: direct sink ready() + send([pcm])         {direct:6.2f} us")


def main() -> None:
    connection = Connection(65536)
    decoder = codec.InboundDecoder()
    decoder.decode(METADATA)
    receive = per_call_us(lambda: connection.receive_data(FRAME))
    print(f"in:  Connection.receive_data                   {receive:6.2f} us")
    decoded = per_call_us(lambda: [decoder.decode(m) for m in connection.receive_data(FRAME)])
    print(f"in:  Connection.receive_data + codec decode    {decoded:6.2f} us")
    sent = per_call_us(lambda: connection.send_texts([codec.encode_audio(PCM)]))
    print(f"out: encode_audio + Connection.send_texts      {sent:6.2f} us")
    trio.run(adapter)


if __name__ == "__main__":
    main()
