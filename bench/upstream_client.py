"""CPU per message of the realtime bridge's upstream WebSocket client: the gateway's own
(`gateway.wire.client` over `SocketTransport`) against trio-websocket (what the bridge used
before), in both directions, alternated in one run.

    python bench/upstream_client.py --messages 20000 --rounds 3

A peer in a process of its own (plain blocking sockets, pinned to `--peer-cpu`) answers the
upgrade, then either sends `--messages` audio deltas shaped like the model's (100 ms of 24 kHz
audio each) as fast as the client takes them, or reads and discards the client's
`input_audio_buffer.append` events (40 ms of 24 kHz audio each). The client runs here, pinned
to `--client-cpu`, and only its own CPU time is counted: microseconds per message received
(read, unmask-free server frames, hand the message over) and per message sent (mask, frame,
write). The rest of the bridge (JSON, resampling) is the same for both and not included.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pybase64
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.wire import framing  # noqa: E402
from gateway.wire.client import connect  # noqa: E402
from gateway.wire.handshake import accept_key  # noqa: E402
from gateway.wire.transport import SocketTransport  # noqa: E402

DELTA = orjson.dumps(
    {
        "type": "response.output_audio.delta",
        "event_id": "event_0001",
        "response_id": "resp_0001",
        "item_id": "item_0001",
        "output_index": 0,
        "content_index": 0,
        "delta": pybase64.b64encode_as_string(os.urandom(4800)),
    }
)
APPEND = orjson.dumps(
    {"type": "input_audio_buffer.append", "audio": pybase64.b64encode_as_string(os.urandom(1920))}
).decode()


def serve(mode: str, count: int) -> None:
    """The peer: one connection, the upgrade, then `count` deltas out or messages drained."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        key = head.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        if mode == "send":
            frame = framing.frame_header(framing.OP_TEXT, len(DELTA)) + DELTA
            batch = frame * 16
            for _ in range(count // 16):
                conn.sendall(batch)
            conn.sendall(frame * (count % 16))
            conn.recv(1)  # the client closes once it has read them all
        else:
            while conn.recv(1 << 20):
                pass
        conn.close()


async def timed(ws: Any, direction: str, count: int) -> float:
    """CPU seconds for `count` messages in `direction` ("receive" or "send") over `ws`."""
    start = time.process_time()
    if direction == "receive":
        for _ in range(count):
            await ws.get_message()
    else:
        for _ in range(count):
            await ws.send_message(APPEND)
    return time.process_time() - start


async def client_run(impl: str, port: int, direction: str, count: int) -> float:
    """Client CPU seconds for `count` messages with the `impl` client."""
    if impl == "gateway":
        stream = SocketTransport.from_socket_stream(await trio.open_tcp_stream("127.0.0.1", port))
        ws = await connect(stream, "127.0.0.1", "/", max_message_bytes=16 << 20)
        spent = await timed(ws, direction, count)
        await ws.abort()
        return spent
    import trio_websocket

    async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as old:
        spent = await timed(old, direction, count)
        await old._stream.aclose()  # no closing handshake: the peer is a bench stub
        return spent


def peer(mode: str, count: int, cpu: int) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, __file__, "--peer", mode, "--messages", str(count)]
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def main(args: argparse.Namespace) -> None:
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for direction, mode in (("receive", "send"), ("send", "drain")):
            for impl in ("trio-websocket", "gateway"):
                proc, port = peer(mode, args.messages, args.peer_cpu)
                try:
                    spent = trio.run(client_run, impl, port, direction, args.messages)
                except Exception as exc:  # a stub peer closing is not the client's cost
                    print(impl, direction, "failed:", exc)
                    continue
                finally:
                    proc.kill()
                    proc.wait()
                results.setdefault((direction, impl), []).append(spent / args.messages * 1e6)
    print(f"{'direction':>9} {'client':>15}  us per message (each round)")
    for (direction, impl), values in sorted(results.items()):
        runs = " ".join(f"{v:6.1f}" for v in values)
        print(f"{direction:>9} {impl:>15}  {runs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-cpu", type=int, default=0, help="-1: do not pin")
    parser.add_argument("--peer-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument("--peer", choices=("send", "drain"), help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.peer:
        serve(parsed.peer, parsed.messages)
    else:
        main(parsed)
