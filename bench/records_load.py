"""Call records under load: echo calls with recording on and off, alternating, in one run.

    python bench/records_load.py --calls 200 --duration 15 --rounds 2
    python bench/records_load.py --pieces        # the per-frame observer cost, in process

Each round starts a fresh `python -m gateway serve` (echo, pinned to `--server-cpu`) twice:
recording off, then on (`ACS_GATEWAY_RECORDING`, `ACS_GATEWAY_CALL_EVENTS`, a temporary
`ACS_GATEWAY_RECORDING_DIR`), and drives it with `bench/echo_load.py`'s generator. Prints per
run the server's CPU per echoed frame, the echo round trip, the pacing lateness p99 (from the
gateway's own `pacing_lateness_seconds` histogram: the upper bound of the bucket holding the
99th percentile), RSS per call, and the bytes recorded; then the cost of recording per frame as
the ratio of the medians, and per off/on pair with their median. At 200 calls the gateway's
core is 70-90% busy and one run's CPU per frame differs from the next's by up to 10% with
nothing changed: use 6 rounds or more and read the spread. `--disk-cpu 1` runs the disk thread
on core 1 (with the load generator) while the event loop stays on core 0, as an unpinned gateway
may have it. `--busy-core` keeps the server's core
from idling (see `bench/echo_load.py`), which takes the machine's idle and clock states out of
the figures.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import echo_load  # noqa: E402
from echo_load import free_port, lateness_p99_ms  # noqa: E402

from gateway.call.interface import CallStats  # noqa: E402
from gateway.call.outcome import CallOutcome, EndReason  # noqa: E402


def threads(pid: int) -> tuple[float, int, int]:
    """The event-loop thread's CPU seconds (the rest is the disk thread's), the times other
    threads (the disk thread) woke, and the times the event loop was preempted."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    woke = preempted = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        except OSError:
            continue
        if task.name == str(pid):
            preempted = int(status["nonvoluntary_ctxt_switches"])
        else:
            woke += int(status["voluntary_ctxt_switches"])
    return cpu, woke, preempted


DISK_CPU_HOOK = """\
import os, sys
if "serve" in sys.argv[1:2]:
    from gateway.records import disk

    run = disk.DiskThread._run

    def _run(self):
        os.sched_setaffinity(0, {%d})  # the disk thread only: 0 is the calling thread
        return run(self)

    disk.DiskThread._run = _run
"""


def disk_cpu_root(root: Path, cpu: int) -> Path:
    """A tree serving `root`'s gateway with its disk thread pinned to `cpu` (a `sitecustomize`
    beside a link to the package): the gateway's code is unchanged."""
    tree = Path(tempfile.mkdtemp(prefix="records-disk-cpu-"))
    atexit.register(shutil.rmtree, tree, True)
    (tree / "gateway").symlink_to(root / "gateway")
    (tree / "sitecustomize.py").write_text(DISK_CPU_HOOK % cpu)
    return tree


def one_run(args: argparse.Namespace, recording: bool) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="records-bench-", dir=args.dir)
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
    marks: list[tuple[float, int, int]] = []  # `threads`, read with the process's CPU

    def close_hook(self: echo_load.Generator) -> None:  # after the run, before the server stops
        try:
            late.append(lateness_p99_ms(port))
        except OSError as exc:
            print(f"cannot scrape /metrics: {exc}", file=sys.stderr)
        original(self)

    def cpu_hook(pid: int) -> float:
        marks.append(threads(pid))
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
    if len(marks) == 2 and result.get("frames_echoed"):
        (cpu0, woke0, pre0), (cpu1, woke1, pre1) = marks
        loop = (cpu1 - cpu0) / result["frames_echoed"] * 1e6
        result["loop_us_per_frame"] = round(loop, 1)
        result["disk_us_per_frame"] = round(result["server_us_per_frame"] - loop, 1)
        result["disk_wakeups_per_s"] = round((woke1 - woke0) / result["window_s"])
        result["loop_preempted_per_s"] = round((pre1 - pre0) / result["window_s"])
    result["recorded_mb"] = round(recorded / 1e6, 1)
    return result


JITTER = (0.0, 0.002, 0.0005, 0.003, 0.001)  # seconds a frame arrives late (echo underruns)


def pieces(calls: int) -> None:
    """Per-frame cost of the observer hooks, in process, with `calls` calls taking turns (so
    each call's state is as cold as in a server): none, latency only, and recording on the
    event loop's side; then the disk thread's jobs of the recorded seconds, run apart and
    timed. CPU time of this thread (`thread_time`): other processes on a busy machine count
    far less than in wall-clock time. A frame is one caller frame in and one bot frame out,
    with a fresh decode and encode of its audio, as a server does, arriving with a little
    jitter (so echo's bot audio starts on arrival, a little after the previous frame ended)."""
    import pybase64

    from gateway.acs.packets import AudioData
    from gateway.call.observer import NO_OBSERVER, CallObserver
    from gateway.records import Records, RecordSettings
    from gateway.records.disk import DiskThread

    wire = pybase64.b64encode_as_string(bytes(range(256)) * 2 + bytes(128))

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
    makers: dict[str, Callable[[str], CallObserver]] = {  # by call id (the file's name)
        "none": lambda _: NO_OBSERVER,
        "latency only": lambda _: Records(Sink()).open(RecordSettings(), {}, "echo"),
        "recording": lambda i: Records(Sink(), disk=jobs).open(
            on, {"x-ms-call-connection-id": i}, "echo"
        ),
    }
    seconds = 3
    best = {name: float("inf") for name in makers}
    disk = float("inf")
    for _ in range(5):
        for name, make in makers.items():
            jobs.jobs.clear()
            observers = [make(str(i)) for i in range(calls)]
            for observer in observers:
                observer.started(FakeCall, 0.0)  # type: ignore[arg-type]  # a stand-in Call
            played = [0.0] * calls  # where each call's bot audio ends
            began = time.thread_time()
            for k in range(50 * seconds):
                late = JITTER[k % len(JITTER)]
                for i, observer in enumerate(observers):
                    t = k * 0.02 + i * 1e-4 + late
                    pcm = pybase64.b64decode(wire)
                    packet = AudioData(pcm, wire, None, None, False)
                    observer.caller_audio(packet, t)
                    start = max(t, played[i])  # echo: played on arrival, or after the last
                    played[i] = start + 0.02
                    observer.bot_audio([pcm], start)
                    pybase64.b64encode_as_string(pcm)
            best[name] = min(best[name], time.thread_time() - began)
            for observer in observers:
                observer.ended(_outcome(), 50 * seconds * 0.02)
            if jobs.jobs:
                spent = 0.0
                for job in jobs.jobs:  # time the audio's writes (not opening, closing files)
                    began = time.thread_time()
                    job()
                    if "flush" in getattr(job, "__qualname__", ""):
                        spent += time.thread_time() - began
                disk = min(disk, spent)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
    frames = 50 * seconds * calls
    base = best["none"] / frames * 1e9
    print(f"{calls} calls, {seconds} s each; ns per frame (one in, one out) on the event loop:")
    print(f"{'none':>14}: {base:7.0f} (decode, encode, the loop)")
    for name in ("latency only", "recording"):
        print(f"{name:>14}: {best[name] / frames * 1e9 - base:+7.0f}")
    print(f"{'disk thread':>14}: {disk / frames * 1e9:+7.0f} (writing the audio)")
    shutil.rmtree(directory, ignore_errors=True)


def _outcome() -> CallOutcome:
    return CallOutcome(EndReason.HANGUP, 1000, CallStats())


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
    parser.add_argument(
        "--dir",
        help="record under this directory (default: the system's temporary one); /dev/shm "
        "takes the kernel's writeback to the disk out of the picture",
    )
    parser.add_argument(
        "--disk-cpu",
        type=int,
        help="pin the gateway's disk thread to this core (the event loop stays on --server-cpu), "
        "as an unpinned gateway may run",
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep the server's core from idling (echo_load.py's SCHED_IDLE spinner)",
    )
    args = parser.parse_args()
    if args.pieces:
        pieces(args.calls)
        return
    args.url = None
    args.server_arg = []
    if args.disk_cpu is not None:
        root = (
            Path(args.gateway_root) if args.gateway_root else Path(__file__).resolve().parent.parent
        )
        args.gateway_root = str(disk_cpu_root(root.resolve(), args.disk_cpu))
    os.sched_setaffinity(0, {args.client_cpu})
    cols = [
        ("recording", "recording"),
        ("calls", "calls"),
        ("rtt_p99_ms", "rtt p99 ms"),
        ("frames_lost", "lost"),
        ("server_us_per_frame", "us/frame"),
        ("loop_us_per_frame", "loop us"),
        ("disk_us_per_frame", "other us"),
        ("disk_wakeups_per_s", "wakes/s"),
        ("loop_preempted_per_s", "preempt/s"),
        ("lateness_p99_ms", "late p99 ms"),
        ("paced", "paced"),
        ("server_rss_per_call_kb", "KB/call"),
        ("recorded_mb", "recorded MB"),
        ("ticker_late_p99_ms", "tick p99 ms"),
    ]
    print(" ".join(f"{title:>11}" for _, title in cols))
    runs: dict[bool, list[float]] = {False: [], True: []}
    with echo_load.core_kept_busy(args.server_cpu if args.busy_core else None):
        for _ in range(args.rounds):
            for recording in (False, True):
                r = one_run(args, recording)
                runs[recording].append(r["server_us_per_frame"])
                print(" ".join(f"{str(r.get(k, 'nan')):>11}" for k, _ in cols), flush=True)
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(
        f"median us/frame: off {off:.1f}, on {on:.1f}: recording costs {100 * (on / off - 1):+.1f}%"
    )
    # Each pair ran back to back, so it shares the machine's moment: its ratio is the steadier
    # figure when the machine drifts between rounds.
    pairs = sorted(100 * (b / a - 1) for a, b in zip(runs[False], runs[True], strict=True))
    print(
        f"per pair: {', '.join(f'{p:+.1f}%' for p in pairs)}; "
        f"median {statistics.median(pairs):+.1f}%"
    )


if __name__ == "__main__":
    main()
