"""Soak: calls start and end continuously for a set duration; is memory flat, does nothing leak?

    python bench/soak.py --concurrency 30 --duration 1800 --warmup 120 --sample-every 30

The gateway (echo, `gc.freeze()` after start-up as `serve` does) runs in this process, so the
sampler sees its live Trio tasks as well as its RSS and open file descriptors. The load runs in a
child process (`--load URL`): `--concurrency` workers, each placing one call after another
through the simulated ACS peer: real-time 20 ms frames of its own random audio for a random
`--call-seconds` (a range), checking the echo is byte-exact, then hanging up (a few end with a
TCP reset instead). The load stops by itself after `--duration` seconds.

Prints a sample table every `--sample-every` seconds (elapsed, RSS, fds, tasks, live calls,
calls accepted and failed, inbound frames dropped) and a verdict: RSS growth from the end of
the warm-up to the end of the load (the goal is within 5%), and fds and tasks once the last
call has ended against the idle baseline taken before the first call. Also a `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import socket
import subprocess
import sys
import time
from typing import Any

import trio

from gateway.config import Config
from gateway.processors import load as load_processor
from gateway.server.serve import Server, serve
from gateway.testing import simulated_call
from gateway.testing.census import open_fds, rss_kb, task_count

SETTLE_TIMEOUT = 30.0  # seconds for the last calls to end after the load stops
RESET_SHARE = 0.05  # calls that end with a TCP reset instead of a close handshake


# -- the load (child process) --


async def place_calls(
    url: str, concurrency: int, duration: float, lengths: tuple[float, float], seed: int
) -> dict[str, int]:
    counts = {"calls": 0, "exact": 0, "mismatched": 0, "errors": 0, "resets": 0}
    deadline = trio.current_time() + duration

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        # stagger the start so calls do not all begin and end together
        await trio.sleep(rng.uniform(0, lengths[0]))
        while trio.current_time() < deadline:
            seconds = rng.uniform(*lengths)
            pcm = rng.randbytes(int(seconds * 50) * 640)
            reset = rng.random() < RESET_SHARE
            counts["calls"] += 1
            try:
                async with simulated_call(url, connection_id=f"soak-{index}") as call:
                    await call.stream(pcm)
                    with trio.fail_after(10):
                        await call.wait_for_audio(len(pcm))
                    exact = call.received_pcm == pcm
                    counts["exact" if exact else "mismatched"] += 1
                    if reset:
                        counts["resets"] += 1
                        _reset(call.ws.stream)
            except Exception as exc:  # noqa: BLE001  (counted and shown; the soak goes on)
                if not reset:
                    counts["errors"] += 1
                    print(f"call error: {exc!r}", file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, index)
    return counts


def _reset(stream: Any) -> None:
    """Abort the TCP connection (RST): SO_LINGER with a zero timeout, then close."""
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


# -- the gateway and the sampler (this process) --


def sample(server: Server, started: float) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mb": round(rss_kb() / 1024, 2),
        "fds": open_fds(),
        "tasks": task_count(),
        "live": server.live,
        "accepted": server.stats.calls_accepted,
        "failed": server.stats.calls_failed,
        "dropped": server.stats.audio_frames_dropped + server.stats.frames_flood_dropped,
    }


COLUMNS = ("t", "rss_mb", "fds", "tasks", "live", "accepted", "failed", "dropped")


def show(row: dict[str, Any]) -> None:
    print(" ".join(f"{row[c]:>9}" for c in COLUMNS), flush=True)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    config = Config(host="127.0.0.1", port=0, max_calls=100_000)
    processor = load_processor("echo")
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config, processor)
        gc.freeze()  # as `acs-media-gateway serve` does after start-up
        await trio.sleep(0.5)
        started = time.monotonic()
        baseline = sample(server, started)
        print(" ".join(f"{c:>9}" for c in COLUMNS))
        show(baseline)
        load_cmd = [
            sys.executable, __file__, "--load", server.urls[0],
            "--concurrency", str(args.concurrency), "--duration", str(args.duration),
            "--call-seconds", args.call_seconds, "--seed", str(args.seed),
        ]  # fmt: skip
        done = trio.Event()
        result: list[subprocess.CompletedProcess[bytes]] = []

        async def run_load() -> None:
            result.append(await trio.run_process(load_cmd, capture_stdout=True, check=False))
            done.set()

        nursery.start_soon(run_load)
        samples = [baseline]
        warm: dict[str, Any] | None = None
        next_at = trio.current_time() + args.sample_every
        while not done.is_set():
            with trio.move_on_at(next_at):
                await done.wait()
            if done.is_set():
                break
            next_at += args.sample_every
            row = sample(server, started)
            samples.append(row)
            show(row)
            if warm is None and row["t"] >= args.warmup:
                warm = row
        end_of_load = samples[-1]
        with trio.move_on_after(SETTLE_TIMEOUT):
            while server.live:  # noqa: ASYNC110  (the server counts calls; no event to wait on)
                await trio.sleep(0.1)
        await trio.sleep(1.0)
        final = sample(server, started)
        show(final)
        server.drain(0)
        await server.stopped.wait()
    (load,) = result
    lines = [ln for ln in load.stdout.decode().splitlines() if ln.startswith("LOAD ")]
    counts = json.loads(lines[-1][5:]) if lines else {"load_exit": load.returncode}
    warm = warm or baseline
    growth = 100 * (end_of_load["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "load": counts,
        "calls_accepted": server.stats.calls_accepted,
        "calls_failed": server.stats.calls_failed,
        "audio_frames_dropped": server.stats.audio_frames_dropped,  # inbound queue full
        "frames_flood_dropped": server.stats.frames_flood_dropped,
        "ended_by": dict(server.stats.ended_by),
        "rss_idle_mb": baseline["rss_mb"],
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_at_end_mb": end_of_load["rss_mb"],
        "rss_growth_after_warmup_pct": round(growth, 2),
        "rss_after_calls_ended_mb": final["rss_mb"],
        "fds_baseline": baseline["fds"],
        "fds_after_calls_ended": final["fds"],
        "tasks_baseline": baseline["tasks"],
        "tasks_after_calls_ended": final["tasks"],
        "live_after": final["live"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=30, help="calls live at once")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of call churn")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the RSS mark")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--call-seconds", default="2,10", help="each call's length: MIN,MAX")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    low, high = (float(x) for x in args.call_seconds.split(","))
    if args.load:
        counts = trio.run(
            place_calls, args.load, args.concurrency, args.duration, (low, high), args.seed
        )
        print("LOAD " + json.dumps(counts), flush=True)
        return
    logging.basicConfig(level=logging.ERROR)
    r = trio.run(soak, args)
    print("RESULT " + json.dumps(r), flush=True)
    fds_ok = r["fds_after_calls_ended"] == r["fds_baseline"]
    tasks_ok = r["tasks_after_calls_ended"] == r["tasks_baseline"]
    flat = abs(r["rss_growth_after_warmup_pct"]) <= 5.0
    print(
        f"calls: {r['load']}, accepted {r['calls_accepted']}, failed {r['calls_failed']}\n"
        f"RSS: idle {r['rss_idle_mb']} MB, after warm-up {r['rss_after_warmup_mb']} MB, "
        f"end of load {r['rss_at_end_mb']} MB ({r['rss_growth_after_warmup_pct']:+.2f}%), "
        f"after the calls ended {r['rss_after_calls_ended_mb']} MB\n"
        f"fds: baseline {r['fds_baseline']}, after {r['fds_after_calls_ended']}; "
        f"tasks: baseline {r['tasks_baseline']}, after {r['tasks_after_calls_ended']}\n"
        f"VERDICT: RSS {'flat' if flat else 'GREW'} (goal: within 5%), "
        f"fds {'back to baseline' if fds_ok else 'LEAKED'}, "
        f"tasks {'back to baseline' if tasks_ok else 'LEAKED'}"
    )


if __name__ == "__main__":
    main()
