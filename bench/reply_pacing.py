"""A bot that talks most of the time: the gateway's CPU per paced frame, by `playout_step_ms`.

    python bench/reply_pacing.py
    python bench/reply_pacing.py --calls 60 --steps 20,40 --rounds 3

`bench/yardstick.py`'s bridged calls get the model's audio at the rate ACS plays it, so the
player sends each delta as it comes and the pacer has almost nothing to do; in
`bench/bridge_cpu.py` the bot speaks about a second of each 5.5 s conversation. A real model
streams its reply faster than real time, so every frame of it after the first lead window waits
for the playout clock. Here each call's processor (`talker`, below) plays 6 s replies streamed
4x faster than real time, in 100 ms chunks, with half a second of silence after each, while the
caller sends silence in real time; every call's bot speaks about 90% of the time.

Each round starts a fresh `python -m gateway serve --processor reply_pacing:talker` pinned to
core 0 (`--server-cpu`) per step (`ACS_GATEWAY_PLAYOUT_STEP_MS`), alternated; the simulated ACS
calls (`gateway.testing.simulated_call`) run in this process on core 1. Prints, per run: the
gateway's CPU per 20 ms frame of the bot's audio that the calls received (the caller's frames,
the same in every run, are in it too: compare runs, not absolute figures), the pacing lateness
p99 (the upper bound of the bucket of the gateway's `pacing_lateness_seconds` that holds it) and
how many paced releases were more than 20 ms and 50 ms late (with the default 60 ms lead, ACS
has 20 ms left at a deadline with a 40 ms step and 40 ms with a 20 ms one: a release later than
that is a gap the caller hears, whatever the simulated ACS saw), and the times ACS ran dry
within a reply (a gap in a call's playback shorter than half the pause between replies: an
underrun the caller would hear; the simulated ACS's own delays in taking the audio count too, so
at loads where this process is busy it is an upper bound).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from echo_load import (  # noqa: E402
    free_port,
    histogram_buckets,
    lateness_p99_ms,
    proc_cpu_seconds,
    start_server,
)

from gateway.processors import Call, Processor  # noqa: E402
from gateway.testing import simulated_call, speech  # noqa: E402

RATE = 16000
REPLY_S = 6.0
PAUSE_S = 0.5  # between replies; a shorter gap in a call's playback is an underrun
CHUNK_S = 0.1  # the model's delta
SPEED = 4.0  # how much faster than real time the reply streams in
BENCH_DIR = str(Path(__file__).resolve().parent)


def talker(options: Mapping[str, Any]) -> Processor:
    """The processor: replies streamed in faster than real time, one after another."""
    reply = (speech(RATE) * 2)[: int(RATE * 2 * REPLY_S)]
    step = int(RATE * 2 * CHUNK_S)

    async def talk(call: Call) -> None:
        player = call.player
        assert player is not None
        async with trio.open_nursery() as nursery:

            async def speak() -> None:
                while True:
                    for at in range(0, len(reply), step):
                        await player.play(reply[at : at + step])
                        await trio.sleep(CHUNK_S / SPEED)
                    await player.drain()
                    await trio.sleep(PAUSE_S)

            nursery.start_soon(speak)
            async for _ in call.packets:  # the caller's silence, until ACS hangs up
                pass
            nursery.cancel_scope.cancel()

    return talk


async def run_calls(url: str, calls: int, seconds: float, stagger: float) -> list[Any]:
    done: list[Any] = []

    async def one(i: int) -> None:
        await trio.sleep(i * stagger)
        async with simulated_call(url, sample_rate=RATE, connection_id=f"pacing-{i}") as call:
            await call.stream(bytes(int(RATE * 2 * (seconds - i * stagger))))
            done.append(call)

    async with trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(one, i)
    return done


def underruns(call: Any) -> int:
    """Gaps in a call's playback shorter than half the pause between replies (which is shorter
    than `PAUSE_S` by what ACS still held when `drain()` returned: up to the lead and the
    catch-up, 160 ms), as the simulated ACS received the audio: its own delays count too."""
    gaps = 0
    end = None
    bps = RATE * 2
    for seg in call.playback.segments:
        if end is not None and 0.001 < seg.start - end < PAUSE_S / 2:
            gaps += 1
        end = seg.start + len(seg.pcm) / bps
    return gaps


def one_run(args: argparse.Namespace, step_ms: int) -> dict[str, float]:
    health = free_port()
    os.environ.update(
        ACS_GATEWAY_HEALTH_PORT=str(health),
        ACS_GATEWAY_HEALTH_HOST="127.0.0.1",
        ACS_GATEWAY_PLAYOUT_STEP_MS=str(step_ms),
    )
    extra = ["--processor", "reply_pacing:talker", "--app-dir", BENCH_DIR]
    proc, url = start_server(args.server_cpu, extra)
    try:
        time.sleep(0.5)
        trio.run(run_calls, url, 1, 1.0, 0.0)  # warm-up: the first call's imports
        cpu0, own0, wall0 = proc_cpu_seconds(proc.pid), time.process_time(), time.monotonic()
        # The simulated calls keep every message they exchange; a full collection of all that
        # stalls this process long enough for its ACS playback to run dry (gaps heard by every
        # call at once, whatever the gateway did), so none runs until they are done.
        gc.disable()
        try:
            calls = trio.run(run_calls, url, args.calls, args.seconds, args.stagger)
        finally:
            gc.enable()
        cpu1, own1, wall1 = proc_cpu_seconds(proc.pid), time.process_time(), time.monotonic()
        late_p99, paced = lateness_p99_ms(health)
        lateness = histogram_buckets(health, "pacing_lateness_seconds")
    finally:
        proc.terminate()
        proc.wait()
    frames = sum(len(c.playback.heard()) for c in calls) / (RATE * 2 // 50)
    return {
        "step_ms": step_ms,
        "us_per_bot_frame": (cpu1 - cpu0) / frames * 1e6,
        "cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "gen_cpu_pct": 100 * (own1 - own0) / (wall1 - wall0),
        "bot_s_per_call": frames / 50 / len(calls),
        "late_p99_ms": late_p99,
        "paced": paced,
        "underruns": sum(underruns(c) for c in calls),
        # Paced releases later than ACS had audio to cover: with a 60 ms lead, ACS holds 20 ms
        # at a deadline with a step of 40, 40 ms with a step of 20 (the nearest bucket: 50).
        "late_20ms": lateness[float("inf")] - lateness[0.02],
        "late_50ms": lateness[float("inf")] - lateness[0.05],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=15.0, help="each call's length")
    parser.add_argument("--stagger", type=float, default=0.02, help="seconds between starts")
    parser.add_argument("--steps", default="20,40", help="playout_step_ms values, alternated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    steps = [int(s) for s in args.steps.split(",")]
    by_step: dict[int, list[float]] = {s: [] for s in steps}
    print(
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {args.calls} calls of "
        f"{args.seconds:g} s, load {os.getloadavg()[0]:.1f}"
    )
    for r in range(args.rounds):
        for step in steps:
            row = one_run(args, step)
            by_step[step].append(row["us_per_bot_frame"])
            print(
                f"round {r + 1} step {step} ms: {row['us_per_bot_frame']:.1f} us per bot frame, "
                f"gateway {row['cpu_pct']:.1f}% of a core, generator {row['gen_cpu_pct']:.1f}%, "
                f"bot heard {row['bot_s_per_call']:.1f} s a call, lateness p99 "
                f"{row['late_p99_ms']:g} ms ({row['paced']:.0f} paced; over 20 ms late "
                f"{row['late_20ms']:.0f}, over 50 ms {row['late_50ms']:.0f}), "
                f"underruns {row['underruns']}",
                flush=True,
            )
    for step in steps:
        print(f"step {step} ms: median {statistics.median(by_step[step]):.1f} us per bot frame")


if __name__ == "__main__":
    main()
