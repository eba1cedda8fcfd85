"""Where an echoed frame's time goes: task steps, system calls and Python functions per frame.

    python bench/echo_profile.py --calls 250 --duration 10
    python bench/echo_profile.py --calls 250 --no-strace --no-pyspy     # task steps only

Runs `python -m gateway serve` (echo) pinned to core 0 under `bench/echo_load.py`'s generator on
core 1, three times with a fresh server, and prints per echoed frame (one in, one out):

1. CPU and Trio's scheduler: task steps, I/O waits (`epoll_wait` returns) and tasks woken by
   I/O, counted by a Trio instrument added to the server's `trio.run`.
2. System calls, by name (`strace -c -f` attached for the window; strace slows the server, so
   this run's latency is not the gateway's own, but the counts per frame are).
3. Python functions (`py-spy record` for the window): the share of samples each function is on
   the stack (inclusive) and at the top (self), the largest first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COUNTS_ENV = "BENCH_TRIO_COUNTS"


def serve_instrumented(argv: list[str]) -> int:
    """`python -m gateway serve ...` with an instrument that writes Trio's counts to a file."""
    import trio

    from gateway import cli

    path = os.environ.get(COUNTS_ENV)
    if path is None:
        return cli.main(argv)

    class Counts(trio.abc.Instrument):
        def __init__(self) -> None:
            self.steps = self.io_waits = 0
            self.written = 0.0
            self.by_task: collections.Counter[str] = collections.Counter()

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.steps += 1
            self.by_task[task.name.rsplit(".", 1)[-1]] += 1

        def after_io_wait(self, timeout: float) -> None:
            self.io_waits += 1
            now = time.monotonic()
            if now - self.written > 0.2:
                self.written = now
                Path(path).write_text(json.dumps([self.steps, self.io_waits, now, self.by_task]))

    run = trio.run
    trio.run = lambda *a, **k: run(*a, instruments=[Counts()], **k)  # type: ignore[assignment]  # add ours
    return cli.main(argv)


def load(args: argparse.Namespace, hooks: tuple[Any, Any], env: dict[str, str]) -> dict[str, Any]:
    """One run: a fresh server, the generator, `hooks` called at the window's start and end."""
    cmd = [sys.executable, __file__, "--serve", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--log-level", "info", "--max-calls", "100000"]
    proc, url = echo_load.start_process(cmd, args.server_cpu, ROOT, env)
    try:
        gen = echo_load.Generator(url, args.calls, 16000)
        marks: dict[str, Any] = {}

        def begin() -> None:
            marks["cpu0"] = echo_load.proc_cpu_seconds(proc.pid)
            marks["start"] = hooks[0](proc.pid)

        def end() -> None:
            marks["cpu1"] = echo_load.proc_cpu_seconds(proc.pid)
            marks["end"] = hooks[1](proc.pid, marks["start"])

        gen.server_start, gen.server_stop = begin, end  # type: ignore[method-assign]  # the hooks
        result = gen.run(2.0, args.duration)
        gen.close()
    finally:
        proc.terminate()
        proc.wait(10)
    frames = max(1, result["frames_echoed"])
    result["us_per_frame"] = round((marks["cpu1"] - marks["cpu0"]) / frames * 1e6, 1)
    result["_marks"] = marks
    return result


def trio_counts(args: argparse.Namespace) -> None:
    path = Path(tempfile.mkdtemp(prefix="echo-profile-")) / "counts.json"

    def read(pid: int, start: Any = None) -> list[float]:
        time.sleep(0.25)  # the instrument writes every 0.2 s: take a fresh line
        return list(json.loads(path.read_text()))

    r = load(args, (read, read), {COUNTS_ENV: str(path)})
    (s0, w0, t0, by0), (s1, w1, t1, by1) = r["_marks"]["start"], r["_marks"]["end"]
    # the counts cover [t0, t1]; the frames echoed cover the generator's window: scale by time
    frames = r["frames_echoed"] * (t1 - t0) / r["window_s"]
    print(
        f"{args.calls} calls: {r['us_per_frame']} us/frame, p99 {r['rtt_p99_ms']} ms, lost "
        f"{r['frames_lost']}; per frame: {(s1 - s0) / frames:.2f} task steps, "
        f"{(w1 - w0) / frames:.3f} epoll waits ({(s1 - s0) / max(1, w1 - w0):.1f} steps per wait)",
        flush=True,
    )
    steps = collections.Counter(by1)
    steps.subtract(by0)
    print(
        "  task steps per frame by task: "
        + ", ".join(f"{name} {n / frames:.2f}" for name, n in steps.most_common(6) if n > 0),
        flush=True,
    )


def strace_counts(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix="echo-profile-")) / "strace.txt"

    def start(pid: int) -> subprocess.Popen[bytes]:
        cmd = ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)]
        tracer = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return tracer

    def stop(pid: int, tracer: subprocess.Popen[bytes]) -> None:
        tracer.send_signal(2)
        tracer.wait(10)

    r = load(args, (start, stop), {})
    frames = max(1, r["frames_echoed"])
    print(f"system calls per echoed frame ({args.calls} calls, under strace):")
    total = 0.0
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            total += calls / frames
            if calls / frames >= 0.01:
                print(f"  {parts[-1]:<16} {calls / frames:6.2f}")
    print(f"  {'all':<16} {total:6.2f}", flush=True)


def pyspy_profile(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix="echo-profile-")) / "pyspy.txt"

    def start(pid: int) -> subprocess.Popen[bytes]:
        cmd = ["py-spy", "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out)]
        cmd += ["-d", str(int(args.duration)), "--nonblocking"]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(pid: int, spy: subprocess.Popen[bytes]) -> None:
        spy.wait(30)

    r = load(args, (start, stop), {})
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
            for f in stack.split(";")
        ]
        samples += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)
    print(f"py-spy ({args.calls} calls, {r['us_per_frame']} us/frame, {samples} samples):")
    print("  inclusive%  self%  function")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / samples:9.1f} {100 * own[name] / samples:6.1f}  {name}")
    print("  largest self%:")
    for name, n in own.most_common(args.top):
        print(f"  {100 * inclusive[name] / samples:9.1f} {100 * n / samples:6.1f}  {name}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        raise SystemExit(serve_instrumented(sys.argv[2:]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=250)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--no-pyspy", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    trio_counts(args)
    if not args.no_strace:
        strace_counts(args)
    if not args.no_pyspy:
        pyspy_profile(args)


if __name__ == "__main__":
    main()
