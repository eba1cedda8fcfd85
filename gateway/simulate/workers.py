"""Running the simulator's calls in several processes (`--processes N`), and the live progress.

Owns: starting worker processes, giving each its share of calls, merging their progress and
results into one `Report`. Never: sending audio itself (each worker runs `runner.Engine`).

Why processes: one Python process has one core; at a few hundred real-time calls the engine's
per-frame work fills it, and a late simulator measures itself, not the gateway. Call i runs in
worker i % N; every worker starts its calls on one shared wall-clock schedule, so the ramp-up
is the same as in one process. Options travel to workers on stdin (the bearer token must not
appear in `ps`); each worker writes JSON lines on stdout: progress every half second, then its
result.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import trio

from .options import Options
from .report import Report
from .results import CallResult, SimulatorHealth
from .runner import run_in_process

SPAWN_ALLOWANCE = 1.5  # seconds for workers to start Python and import before call 0 starts


async def run(
    options: Options, on_progress: Callable[[dict[str, int]], None] | None = None
) -> Report:
    """Run the whole load test (in this process, or in `options.processes` workers)."""
    settings = {k: v for k, v in options.to_json().items() if k != "token"}
    if options.processes <= 1:
        calls, health = await run_in_process(options, on_progress=on_progress)
        return Report(calls, health, settings)
    start_at = time.time() + SPAWN_ALLOWANCE
    latest: dict[int, dict[str, int]] = {}
    results: list[dict[str, Any]] = []

    async def worker(i: int) -> None:
        job = orjson.dumps(
            {
                "options": options.to_json(),
                "worker": i,
                "of": options.processes,
                "start_at": start_at,
            }
        )
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-m", "gateway.simulate.workers"],
                    stdin=job,
                    stdout=subprocess.PIPE,
                )
            )
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = orjson.loads(line)
                    if "progress" in message:
                        latest[i] = message["progress"]
                        if on_progress is not None:
                            on_progress(_sum(latest.values()))
                    else:
                        results.append(message["result"])

    async with trio.open_nursery() as nursery:
        for i in range(options.processes):
            nursery.start_soon(worker, i)
    health = SimulatorHealth()
    merged: list[CallResult] = []
    for result in results:
        health.merge(SimulatorHealth.from_json(result["health"]))
        merged += [CallResult.from_json(c) for c in result["calls"]]
    merged.sort(key=lambda c: c.index)
    return Report(merged, health, settings)


def _sum(progress: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in progress:
        for key, value in p.items():
            total[key] = total.get(key, 0) + value
    return total


def _worker_main() -> None:
    job = orjson.loads(sys.stdin.buffer.read())
    options = Options.from_json(job["options"])
    indices = range(job["worker"], options.calls, job["of"])
    out = sys.stdout.buffer

    def progress(p: dict[str, int]) -> None:
        out.write(orjson.dumps({"progress": p}) + b"\n")
        out.flush()

    calls, health = trio.run(
        lambda: run_in_process(
            options, indices, start_at=job["start_at"], on_progress=progress, progress_every=0.5
        )
    )
    result = {"calls": [c.to_json() for c in calls], "health": health.to_json()}
    out.write(orjson.dumps({"result": result}) + b"\n")
    out.flush()


class ProgressLine:
    """The live progress display: one line rewritten in place on a terminal, or a line every
    `every` seconds when stderr is a file or a CI log."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.stream = stream = stream or sys.stderr
        self.tty = stream.isatty()
        self.every = every
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, p: dict[str, int]) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < self.every:
            return
        self._last = now
        line = (
            f"{now - self.started:6.1f} s  calls up {p['up']}/{p['calls']}  frames sent "
            f"{p['sent']}  received {p['received']}  errors {p['errors']}"
        )
        self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


if __name__ == "__main__":
    _worker_main()
