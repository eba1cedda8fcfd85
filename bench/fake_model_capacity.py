"""How many sessions the fake realtime model (`gateway.testing.open_fake_model`) serves on one
core, in real time: the load generator of the bridged benchmarks (`bridge_cpu.py`,
`yardstick.py`) must not be their bottleneck.

    python bench/fake_model_capacity.py --sweep 60,100,140,180,220,260,300 --duration 8 --stop
    python bench/fake_model_capacity.py --calls 100 --duration 8

The fake model runs in a process of its own pinned to `--model-cpu` (a fresh one per load);
this process, pinned to `--client-cpu`, opens N sessions with the gateway's own WebSocket client
and plays each as the gateway's uplink does: `session.update`, then every 40 ms (on absolute
deadlines, the sessions spread over the period) one `input_audio_buffer.append` of 40 ms of
24 kHz PCM16 in base64, in a `--turn-s` cycle of 1 s of speech and silence after it, so that the
model's VAD ends each turn and the model streams its reply (`--reply-s` of audio, 4x faster than
real time, in 100 ms deltas). Once a second each session also sends a probe
(`conversation.item.delete`) and times the model's answer: it waits behind every event the model
has not read yet, so it shows the model falling behind.

Per load it prints the model's CPU (% of a core, and per session) over the measured window,
the probe round trip (p50, p99, max ms), reply deltas received per session per second, this
process's CPU and how late it sent its appends (p99 ms: a late generator delays the probes
too), and whether the model kept up: probe p99 within `--max-lag-ms` and no session
lost. The last line is the largest load that kept up.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path

import orjson
import pybase64
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.errors import ConnectionClosed  # noqa: E402
from gateway.testing import open_fake_model  # noqa: E402
from gateway.wire.client import connect  # noqa: E402
from gateway.wire.transport import SocketTransport  # noqa: E402

RATE = 24000
CHUNK_MS = 40


def tone(seconds: float, amplitude: int) -> bytes:
    n = int(RATE * seconds)
    return array("h", (int(amplitude * math.sin(i * 0.07)) for i in range(n))).tobytes()


def append(pcm: bytes) -> str:
    audio = pybase64.b64encode_as_string(pcm)
    return orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()


SPEECH = append(tone(CHUNK_MS / 1000, 3000))
SILENCE = append(bytes(RATE * 2 * CHUNK_MS // 1000))
UPDATE = orjson.dumps(
    {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": {}}}},
    }
).decode()


async def serve_model(reply_s: float) -> None:
    async with open_fake_model([tone(reply_s, 2000)] * 100000, speed=4.0) as model:
        print(model.url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes stdin


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.rtts: list[float] = []
        self.late: list[float] = []  # how late this process sent each append
        self.deltas = 0
        self.failed = 0


async def session(
    port: int, phase: float, start: float, end: float, turn_s: float, stats: Stats
) -> None:
    stream = SocketTransport.from_socket_stream(await trio.open_tcp_stream("127.0.0.1", port))
    ws = await connect(stream, "127.0.0.1", "/", max_message_bytes=16 << 20)
    sent: dict[str, float] = {}

    async def read() -> None:
        while True:
            message = await ws.get_message()
            if b'"conversation.item.deleted"' in message[:80]:
                probe = orjson.loads(message)["item_id"]
                if stats.measuring:
                    stats.rtts.append(time.perf_counter() - sent.pop(probe))
            elif b"audio.delta" in message[:80] and stats.measuring:
                stats.deltas += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await ws.send_message(UPDATE)
            tick = start + phase
            chunks_per_turn = round(turn_s * 1000 / CHUNK_MS)
            speech_chunks = 1000 // CHUNK_MS
            n = 0
            while tick < end:
                await trio.sleep_until(tick)
                if stats.measuring:
                    stats.late.append(trio.current_time() - tick)
                await ws.send_message(SPEECH if n % chunks_per_turn < speech_chunks else SILENCE)
                if n % (1000 // CHUNK_MS) == 0:
                    probe = f"probe-{n}"
                    sent[probe] = time.perf_counter()
                    await ws.send_message(
                        f'{{"type":"conversation.item.delete","item_id":"{probe}"}}'
                    )
                n += 1
                tick += CHUNK_MS / 1000
            nursery.cancel_scope.cancel()
    except ConnectionClosed:
        stats.failed += 1
    finally:
        await ws.abort()


async def load(args: argparse.Namespace, port: int, calls: int, model_pid: int) -> dict[str, float]:
    stats = Stats()
    now = trio.current_time()
    ramp = max(1.0, calls * 0.01)
    start, measure_at = now + 0.5, now + 0.5 + ramp + 1.0
    end = measure_at + args.duration
    async with trio.open_nursery() as nursery:
        for k in range(calls):
            phase = (k * CHUNK_MS / 1000 / max(calls, 1)) + ramp * k / calls
            nursery.start_soon(session, port, phase, start, end, args.turn_s, stats)
        await trio.sleep_until(measure_at)
        stats.measuring = True
        cpu0, own0, t0 = proc_cpu_seconds(model_pid), time.process_time(), time.perf_counter()
        await trio.sleep_until(end)
        cpu1, own1, t1 = proc_cpu_seconds(model_pid), time.process_time(), time.perf_counter()
        stats.measuring = False
        await trio.sleep(0.5)  # the last probes' answers
    rtts = sorted(stats.rtts) or [float("inf")]
    late = sorted(stats.late) or [0.0]
    wall = t1 - t0
    return {
        "calls": calls,
        "model_cpu": 100 * (cpu1 - cpu0) / wall,
        "p50": 1000 * rtts[len(rtts) // 2],
        "p99": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
        "max": 1000 * rtts[-1],
        "probes": len(stats.rtts) / (calls * wall),
        "deltas": stats.deltas / (calls * wall),
        "gen_cpu": 100 * (own1 - own0) / wall,
        "gen_late": 1000 * late[int(len(late) * 0.99)],
        "failed": stats.failed,
    }


def run_one(args: argparse.Namespace, calls: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--serve-model", "--reply-s", str(args.reply_s)]
    if args.model_cpu >= 0:
        cmd = ["taskset", "-c", str(args.model_cpu), *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        port = int(proc.stdout.readline().decode().strip().rsplit(":", 1)[1])
        return trio.run(load, args, port, calls, proc.pid)
    finally:
        proc.stdin.close()
        proc.wait()


def main(args: argparse.Namespace) -> None:
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    loads = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.calls]
    print(
        f"{'calls':>5} {'model%':>7} {'%/call':>6} {'probe p50':>9} {'p99':>7} {'max':>7} "
        f"{'deltas/s':>8} {'gen%':>5} {'late p99':>8} {'lost':>4}  kept up"
    )
    best = 0
    for calls in loads:
        r = run_one(args, calls)
        ok = r["p99"] <= args.max_lag_ms and not r["failed"]
        best = calls if ok else best
        print(
            f"{calls:5d} {r['model_cpu']:7.1f} {r['model_cpu'] / calls:6.2f} {r['p50']:9.1f} "
            f"{r['p99']:7.1f} {r['max']:7.1f} {r['deltas']:8.1f} {r['gen_cpu']:5.1f} "
            f"{r['gen_late']:8.1f} {r['failed']:4.0f}  {'yes' if ok else 'NO'}",
            flush=True,
        )
        if r["gen_cpu"] > 85 or r["gen_late"] > args.max_lag_ms / 2:
            print("  warning: this process may be the bottleneck (gen% near a core, or late)")
        if not ok and args.stop:
            break
    print(f"largest load kept up: {best or '<' + str(loads[0])} sessions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--sweep", default="", help="loads to try, e.g. 20,40,60")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--turn-s", type=float, default=4.0, help="a turn: 1 s speech, silence")
    parser.add_argument("--reply-s", type=float, default=3.0, help="each reply's audio")
    parser.add_argument("--max-lag-ms", type=float, default=100.0)
    parser.add_argument("--stop", action="store_true", help="stop at the first load not kept up")
    parser.add_argument("--model-cpu", type=int, default=0, help="-1: do not pin")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve_model:
        trio.run(serve_model, parsed.reply_s)
    else:
        main(parsed)
