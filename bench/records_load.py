"""Call records under load: echo calls with recording on and off, alternating, in one run.

    python bench/records_load.py --calls 200 --duration 15 --rounds 2
    python bench/records_load.py --pieces        # the per-frame observer cost, in process

Each round starts a fresh `python -m gateway serve` (echo, pinned to `--server-cpu`) twice:
recording off, then on (`ACS_GATEWAY_RECORDING`, `ACS_GATEWAY_CALL_EVENTS`, a temporary
`ACS_GATEWAY_RECORDING_DIR`), and drives it with `bench/echo_load.py`'s generator. Prints per
run the server's CPU per echoed frame, the echo round trip, the pacing lateness p99 (from the
gateway's own `pacing_lateness_seconds` histogram: the upper bound of the bucket holding the
99th percentile), RSS per call, and the bytes recorded; then the cost of recording per frame as
the ratio of the medians. The machine may be shared: alternate runs and read the spread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import echo_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lateness_p99_ms(port: int) -> tuple[float, int]:
    """The upper bound of the bucket holding the 99th percentile of pacing lateness, and how
    many paced releases it was measured on."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("acs_gateway_pacing_lateness_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = int(buckets[-1][1]) if buckets else 0
    if not total:
        return 0.0, 0
    for bound, count in buckets:
        if count >= 0.99 * total:
            return bound * 1000, total
    return float("inf"), total


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU of the gateway's event-loop thread alone (the rest is the disk thread's)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(args: argparse.Namespace, recording: bool) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="records-bench-")
    port = free_port()
    env = {
        "ACS_GATEWAY_HEALTH_PORT": str(port),
        "ACS_GATEWAY_HEALTH_HOST": "127.0.0.1",
        "ACS_GATEWAY_RECORDING": "true" if recording else "false",
        "ACS_GATEWAY_CALL_EVENTS": "true" if recording else "false",
        "ACS_GATEWAY_RECORDING_DIR": directory,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    late: list[tuple[float, int]] = []
    original = echo_load.Generator.close
    process_cpu = echo_load.proc_cpu_seconds
    loop_cpu: list[float] = []  # the event loop's CPU, read with the process's (start, end)

    def close_hook(self: echo_load.Generator) -> None:  # after the run, before the server stops
        try:
            late.append(lateness_p99_ms(port))
        except OSError as exc:
            print(f"cannot scrape /metrics: {exc}", file=sys.stderr)
        original(self)

    def cpu_hook(pid: int) -> float:
        loop_cpu.append(main_thread_cpu_seconds(pid))
        return process_cpu(pid)

    try:
        echo_load.Generator.close = close_hook  # type: ignore[method-assign]  # scrape first
        echo_load.proc_cpu_seconds = cpu_hook
        result = echo_load.one_load(args, args.calls)
    finally:
        echo_load.Generator.close = original  # type: ignore[method-assign]  # restore
        echo_load.proc_cpu_seconds = process_cpu
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    time.sleep(0.5)  # the server flushes its last second of recordings on the way out
    recorded = sum(p.stat().st_size for p in Path(directory).iterdir())
    shutil.rmtree(directory, ignore_errors=True)
    result["recording"] = recording
    result["lateness_p99_ms"], result["paced"] = late[0] if late else (float("nan"), 0)
    if len(loop_cpu) == 2 and result.get("frames_echoed"):
        loop = (loop_cpu[1] - loop_cpu[0]) / result["frames_echoed"] * 1e6
        result["loop_us_per_frame"] = round(loop, 1)
        result["disk_us_per_frame"] = round(result["server_us_per_frame"] - loop, 1)
    result["recorded_mb"] = round(recorded / 1e6, 1)
    return result


def pieces() -> None:
    """Per-frame cost of the observer hooks, in process: none, latency only, and recording on
    the event loop's side (the disk's jobs counted apart: the loop runs here far faster than
    real time, which would bury the disk thread); then the disk thread's cost per frame."""
    import timeit

    from gateway.acs.packets import AudioData
    from gateway.call.observer import NO_OBSERVER
    from gateway.records import Records, RecordSettings
    from gateway.records.disk import DiskThread

    pcm = bytes(range(256)) * 2 + bytes(128)
    packet = AudioData(pcm=pcm, data="", timestamp=None, participant_raw_id=None, silent=False)

    class Sink:
        def latency(self, kind: str, route: str, seconds: float) -> None:
            pass

        def recording_stopped(self, route: str) -> None:
            pass

    class Jobs(DiskThread):  # keeps the jobs, runs them later, timed
        def __init__(self) -> None:
            super().__init__()
            self.jobs: list[Callable[[], None]] = []

        def submit(self, job: Callable[[], None]) -> None:
            self.jobs.append(job)

    class FakeCall:
        connection_id = correlation_id = None
        path = "/"
        sample_rate = 16000

        class audio:  # noqa: N801
            sample_rate = 16000

    directory = tempfile.mkdtemp(prefix="records-pieces-")
    jobs = Jobs()
    on = RecordSettings(recording=True, events=True, directory=directory, buffer_seconds=1e9)
    observers = {
        "none": NO_OBSERVER,
        "latency only": Records(Sink()).open(RecordSettings(), {}, "echo"),
        "recording": Records(Sink(), disk=jobs).open(on, {}, "echo"),
    }
    n = 50 * 600  # ten minutes of frames
    for name, observer in observers.items():
        observer.started(FakeCall, 0.0)  # type: ignore[arg-type]  # a stand-in Call
        best = float("inf")
        clock = iter(range(10**9))  # the call's time goes on across the repeats
        for _ in range(3):

            def frame(o=observer, c=clock) -> None:  # type: ignore[no-untyped-def]  # bound now
                t = next(c) * 0.02
                o.caller_audio(packet, t)
                o.bot_audio([pcm], t)

            best = min(best, timeit.timeit(frame, number=n))
        print(f"{name:>14}: {best / n * 1e9:7.0f} ns per frame on the event loop")
    started = time.perf_counter()
    for job in jobs.jobs:
        job()
    disk = time.perf_counter() - started
    print(f"{'disk thread':>14}: {disk / (3 * n) * 1e9:7.0f} ns per frame (writes)")
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--pieces", action="store_true", help="only the in-process hook cost")
    parser.add_argument(
        "--gateway-root", help="serve the gateway from this source tree (default: this one)"
    )
    args = parser.parse_args()
    if args.pieces:
        pieces()
        return
    args.url = None
    args.server_arg = []
    os.sched_setaffinity(0, {args.client_cpu})
    cols = [
        ("recording", "recording"),
        ("calls", "calls"),
        ("rtt_p99_ms", "rtt p99 ms"),
        ("frames_lost", "lost"),
        ("server_us_per_frame", "us/frame"),
        ("loop_us_per_frame", "loop us"),
        ("disk_us_per_frame", "other us"),
        ("lateness_p99_ms", "late p99 ms"),
        ("paced", "paced"),
        ("server_rss_per_call_kb", "KB/call"),
        ("recorded_mb", "recorded MB"),
        ("ticker_late_p99_ms", "tick p99 ms"),
    ]
    print(" ".join(f"{title:>11}" for _, title in cols))
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for recording in (False, True):
            r = one_run(args, recording)
            runs[recording].append(r["server_us_per_frame"])
            print(" ".join(f"{str(r.get(k, 'nan')):>11}" for k, _ in cols), flush=True)
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"median us/frame: off {off}, on {on}: recording costs {100 * (on / off - 1):+.1f}%")


if __name__ == "__main__":
    main()
