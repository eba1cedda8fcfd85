"""What one echo call costs in memory: RSS growth per call, and what the server holds per call.

    python bench/call_memory.py                      # 20 then 200 calls, 3 runs
    python bench/call_memory.py --calls 262 --runs 1 # at the yardstick's knee
    python bench/call_memory.py --trace              # plus tracemalloc, 10 then 30 calls

Each run starts a fresh `python -m gateway serve` (echo, 127.0.0.1, port 0) and drives it with
`bench/echo_load.py`'s generator: calls open at 200 a second, each sends one 20 ms frame every
20 ms in real time (calls spread over the period) and gets its echo. First `--base` calls are
held `--hold` seconds and the server's RSS is read; then more calls open, up to `--calls`, are
held as long, and the RSS is read again, with the calls live. Per run it prints:

- KB/call: (RSS with `--calls` live - RSS just after the server said it was listening) / calls,
  as `bench/yardstick.py` computes it (first-call costs, such as lazy imports, included);
- marginal: (RSS at `--calls` - RSS at `--base`) / (calls - base): what one more call costs;
- after end: the RSS growth per call once every call has closed (what the allocators kept);
- p99 ms, lost: the echo round trip over the last second of each hold and frames never echoed.
  A server that fell behind (p99 over `--late-ms`, flagged `late`) holds queued frames, so that
  run measured the backlog as well as the calls: on a busy machine, believe the runs without
  the flag.

`--trace` adds a run with the server under `tracemalloc` (this script's `--serve-traced` wraps
`serve`; about twice as slow, hence fewer calls: `--trace-base`, `--trace-calls`): a snapshot
at each RSS reading, taken after 0.5 s without inbound audio (so that what is queued has
drained and what each call holds remains), and the difference between the two with calls
live, by allocating line
(`--group lineno`; `traceback` with `--frames N`), per call, the top `--top` lines. Memory that
is not Python's allocations (the allocators' free space, the interpreter's own) shows in RSS
and not there.

Numbers only; nothing is asserted. The server runs with this process's priority: run it under
`nice` on a shared machine (RSS does not depend on CPU, as long as nothing queues).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_load  # noqa: E402
from echo_load import FRAME_S, RAMP_PER_TICK, RING, Call, Generator, proc_rss_kb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS_ENV = "CALL_MEMORY_SNAPSHOTS"  # the folder the traced server writes snapshots to
FRAMES_ENV = "CALL_MEMORY_FRAMES"  # frames tracemalloc keeps per allocation


def serve_cmd(traced: bool) -> list[str]:
    serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "info"]
    serve += ["--max-calls", "100000", "--processor", "echo"]
    if traced:
        return [sys.executable, str(Path(__file__).resolve()), "--serve-traced", *serve]
    return [sys.executable, "-m", "gateway", *serve]


def serve_traced(argv: list[str]) -> int:
    """`gateway serve` under tracemalloc; each SIGUSR1 writes the next snapshot (0.snap,
    1.snap, ...) to the folder in `CALL_MEMORY_SNAPSHOTS`."""
    folder = Path(os.environ[SNAPSHOTS_ENV])
    taken = 0

    def snapshot(signum: int, frame: object) -> None:
        nonlocal taken
        path = folder / f"{taken}.snap"
        tracemalloc.take_snapshot().dump(f"{path}.part")
        os.rename(f"{path}.part", path)  # complete once it has its name
        taken += 1

    tracemalloc.start(int(os.environ.get(FRAMES_ENV, "1")))
    signal.signal(signal.SIGUSR1, snapshot)
    from gateway.cli import main

    return main(argv)


class Load(Generator):
    """echo_load's generator, driven in steps: open calls up to a number, then hold them."""

    def __init__(self, url: str, rate: int) -> None:
        super().__init__(url, 0, rate)
        self.seq = 0
        self.start = time.monotonic()
        self.tick = 0
        self.window = (math.inf, math.inf)  # frames sent in it are timed

    def on_echo(self, call: Call, buf: bytearray, at: int, now: float) -> None:
        sent = call.sent_at[self.seq_of(buf, at) % RING]
        if self.window[0] <= sent < self.window[1]:
            self.rtts.append(now - sent)

    def step(self, calls: int, hold: float) -> None:
        """Open calls up to `calls` (RAMP_PER_TICK per 20 ms) and, once all are up, keep every
        call talking `hold` seconds more; round trips are kept for the last second."""
        self.rtts = []
        self.sent = 0
        self.window = (math.inf, math.inf)
        sub_s = FRAME_S / self.phases
        until = None
        while True:
            deadline = self.start + self.tick * sub_s
            now = time.monotonic()
            while now < deadline:
                for key, _ in self.sel.select(deadline - now):
                    self.on_readable(key.data, time.monotonic())
                now = time.monotonic()
            phase = self.tick % self.phases
            if phase == 0:
                for _ in range(min(RAMP_PER_TICK, calls - len(self.calls))):
                    self.open_call(len(self.calls))
            if until is None and len(self.calls) == calls and all(c.upgraded for c in self.calls):
                until = now + hold
                # round trips of the frames sent in the last second but its last 250 ms (their
                # echoes come before the step ends, unless the server is that far behind)
                self.window = (until - 1.0, until - 0.25)
            if until is not None and now >= until:
                return
            slot = self.seq % RING
            for call in self.calls[phase :: self.phases]:
                if call.upgraded and not call.closed:
                    call.sent_at[slot] = now
                    try:
                        call.sock.send(call.frames[slot])
                    except (BlockingIOError, OSError):
                        self.errors += 1
                    if self.window[0] <= now < self.window[1]:
                        self.sent += 1
            if phase == self.phases - 1:
                self.seq += 1
            self.tick += 1

    def quiet(self, seconds: float) -> None:
        """Send nothing for `seconds` (echoes still read): the server's queues drain."""
        until = time.monotonic() + seconds
        while (now := time.monotonic()) < until:
            for key, _ in self.sel.select(until - now):
                self.on_readable(key.data, time.monotonic())
        # the next frames go out as if no tick had been missed
        self.tick = int((time.monotonic() - self.start) / (FRAME_S / self.phases)) + 1

    def p99_ms(self) -> float:
        rtts = sorted(self.rtts)
        return round(rtts[len(rtts) * 99 // 100] * 1000, 1) if rtts else float("nan")


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the traced server wrote no {path.name}")
        time.sleep(0.05)


def one_run(args: argparse.Namespace, base: int, calls: int, traced: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="call-memory-") as snapshots:
        return measure(args, base, calls, traced, Path(snapshots))


def measure(
    args: argparse.Namespace, base: int, calls: int, traced: bool, folder: Path
) -> dict[str, float]:
    env = {SNAPSHOTS_ENV: str(folder), FRAMES_ENV: str(args.frames)}
    root = Path(args.gateway_root or ROOT)
    proc, url = echo_load.start_process(serve_cmd(traced), args.server_cpu, root, env)
    snapshots = 0

    def mark() -> int:
        nonlocal snapshots
        rss = proc_rss_kb(proc.pid)
        if traced:  # what the calls hold, not what queued: a snapshot once the queues drained
            if snapshots:
                load.quiet(0.5)
            proc.send_signal(signal.SIGUSR1)
            wait_for(folder / f"{snapshots}.snap")
            snapshots += 1
        return rss

    try:
        time.sleep(0.5)  # what the server does once it says it is listening
        load = Load(url, args.rate)
        rss_idle = mark()
        load.step(base, args.hold)
        rss_base, p99_base = mark(), load.p99_ms()
        load.step(calls, args.hold)
        rss_live, p99 = proc_rss_kb(proc.pid), load.p99_ms()
        lost = max(0, load.sent - len(load.rtts))
        if traced:
            mark()
        load.close()
        time.sleep(1.0)
        rss_after = proc_rss_kb(proc.pid)
    finally:
        echo_load.stop_process(proc)
    if traced:
        show_trace(folder, calls - base, args)
    return {
        "rss_idle_mb": round(rss_idle / 1024, 1),
        "kb_per_call": round((rss_live - rss_idle) / calls, 1),
        "kb_marginal": round((rss_live - rss_base) / (calls - base), 1),
        "kb_after_end": round((rss_after - rss_idle) / calls, 1),
        "p99_ms": max(p99_base, p99),
        "lost": lost,
        "errors": load.errors,
    }


def show_trace(folder: Path, calls: int, args: argparse.Namespace) -> None:
    base = tracemalloc.Snapshot.load(str(folder / "1.snap"))
    live = tracemalloc.Snapshot.load(str(folder / "2.snap"))
    diff = live.compare_to(base, args.group)
    total = sum(d.size_diff for d in diff)
    count = sum(d.count_diff for d in diff)
    print(
        f"\ntraced: {total / calls / 1024:.1f} KB in {count / calls:.0f} blocks per added call "
        f"(Python's allocations, by {args.group}):"
    )
    print(f"{'B/call':>8} {'blocks':>7}  where")
    for stat in diff[: args.top]:
        where = [line.strip() for line in stat.traceback.format(limit=args.frames)]
        where = [line for line in where if line.startswith("File ")]  # no source lines
        print(f"{stat.size_diff / calls:8.0f} {stat.count_diff / calls:7.1f}  {where[0]}")
        for line in where[1:]:
            print(f"{'':18}{line}")
    rest = total - sum(d.size_diff for d in diff[: args.top])
    print(f"{rest / calls:8.0f}          (everything else)\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-traced":
        raise SystemExit(serve_traced(sys.argv[2:]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--base", type=int, default=20, help="calls at the first RSS reading")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each step is held")
    parser.add_argument("--runs", type=int, default=3, help="untraced runs, a fresh server each")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--late-ms", type=float, default=50.0, help="flag runs with a p99 above")
    parser.add_argument("--trace", action="store_true", help="one more run, under tracemalloc")
    parser.add_argument("--trace-base", type=int, default=10)
    parser.add_argument("--trace-calls", type=int, default=30)
    parser.add_argument("--top", type=int, default=25, help="lines of the traced breakdown")
    parser.add_argument("--group", default="lineno", choices=("lineno", "filename", "traceback"))
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    parser.add_argument("--server-cpu", type=int, default=None, help="pin the server to a core")
    parser.add_argument(
        "--gateway-root", help="serve the gateway from this source tree (default: this one)"
    )
    args = parser.parse_args()
    if args.frames > 1 and args.group == "lineno":
        args.group = "traceback"
    print(f"echo calls at {args.rate} Hz, {args.base} then {args.calls}, each held {args.hold:g} s")
    header = f"{'run':>5} {'idle MB':>8} {'KB/call':>8} {'marginal':>9} {'after end':>10}"
    print(f"{header} {'p99 ms':>7} {'lost':>5}")
    kept: list[float] = []
    runs = [(str(i + 1), args.base, args.calls, False) for i in range(args.runs)]
    if args.trace:
        runs.append(("trace", args.trace_base, args.trace_calls, True))
    for name, base, calls, traced in runs:
        r = one_run(args, base, calls, traced)
        late = r["p99_ms"] > args.late_ms and not traced  # a traced server is slow anyway
        if not traced and not late:
            kept.append(r["kb_per_call"])
        print(
            f"{name:>5} {r['rss_idle_mb']:>8} {r['kb_per_call']:>8} {r['kb_marginal']:>9} "
            f"{r['kb_after_end']:>10} {r['p99_ms']:>7} {r['lost']:>5}"
            + ("  late" if late else "")
            + (f"  errors {r['errors']}" if r["errors"] else ""),
            flush=True,
        )
    if kept:
        print(
            f"KB/call, runs without a backlog ({len(kept)}): {min(kept)}-{max(kept)}, "
            f"median {statistics.median(kept)}"
        )


if __name__ == "__main__":
    main()
