"""Microseconds per frame for each step of the inbound/outbound path, and the A/B that chose
our frame reader over wsproto. Run: python bench/pieces.py

Prints the median of several runs of each operation on one ~1 KB masked AudioData frame,
as ACS sends it (16 kHz, 640 bytes of PCM).
"""

from __future__ import annotations

import os
import statistics
import sys
import timeit
from pathlib import Path

import pybase64
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacer_wakes import Sink  # noqa: E402  # a socket that takes every write at once

from gateway.acs import codec  # noqa: E402
from gateway.call.player import Player  # noqa: E402
from gateway.call.playout import Playout  # noqa: E402
from gateway.wire import framing  # noqa: E402

N = 20000
PCM = os.urandom(640)
MESSAGE = (
    '{"kind":"AudioData","audioData":{"timestamp":"2024-11-15T19:16:12.925Z",'
    f'"data":"{pybase64.b64encode_as_string(PCM)}","silent":false}}}}'
)
FRAME = FrameProtocol(client=True, extensions=[]).send_data(MESSAGE)


def per_call_us(fn) -> float:
    runs = timeit.repeat(fn, number=N, repeat=5)
    return statistics.median(runs) / N * 1e6


def wsproto_server() -> WSConnection:
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/")))
    next(server.events())
    server.send(AcceptConnection())
    return server


class Deadlines:
    """The shared pacer's side of a paced release: the next deadline the player asks for."""

    next = 0.0

    def wake_at(self, deadline: float, waiter: object) -> None:
        self.next = deadline


def main() -> None:
    ws = wsproto_server()

    def wsproto_receive() -> None:
        ws.receive_data(FRAME)
        for _ in ws.events():
            pass

    reader = framing.FrameReader(65536)
    decoder = codec.InboundDecoder()
    decoder.decode('{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000}}')
    out = codec.encode_audio(PCM)
    playout = Playout(16000)
    clock = [0.0]

    def play_one() -> None:  # an echo's frame, 20 ms after the last: queued and released
        clock[0] += 0.020
        playout.enqueue(PCM)
        playout.release_due(clock[0])

    pacer = Deadlines()
    now = [0.0]
    paced = Player(Playout(16000, catchup_ms=0), clock=lambda: now[0], pacer=pacer, direct=Sink())  # type: ignore[arg-type]  # Deadlines stands in for the pacer
    paced.playout.enqueue(PCM * 100)  # 2 s of a reply, kept topped up: the queue has room
    paced._sender_wakes_at = 0.0  # the send task sleeps until the pacer tells it, at 0

    def release_one() -> None:  # a bot's frame, released at its deadline by the pacer's call
        now[0] = pacer.next
        paced.deadline_passed(pacer.next, pacer.next)
        paced.playout.enqueue(PCM)

    rows = [
        ("frame in: wsproto receive_data + events()", wsproto_receive),
        ("frame in: gateway.framing.FrameReader.receive", lambda: reader.receive(FRAME)),
        (
            "decode: codec InboundDecoder.decode (orjson + pybase64 + attrs)",
            lambda: decoder.decode(MESSAGE.encode()),
        ),
        ("playout: Playout.enqueue + release_due, 20 ms apart", play_one),
        ("paced: Player.deadline_passed, a frame (no socket)", release_one),
        ("encode: codec.encode_audio (pybase64 + concatenation)", lambda: codec.encode_audio(PCM)),
        ("frame out: wsproto send(TextMessage)", lambda: ws.send(TextMessage(data=out))),
        ("frame out: gateway.framing.encode_texts", lambda: framing.encode_texts([out])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, fn in rows:
        print(f"{name:<{width}}  {per_call_us(fn):6.2f} us")


if __name__ == "__main__":
    main()
