"""Smoke run of the benchmarks: does each one still run, in its smallest form?

    python bench/smoke.py
    python bench/smoke.py --only echo_load,yardstick

Owns: the table of benchmarks (`BENCHES`: name, arguments, timeout), each with the smallest
invocation that still goes through its real code path (a few calls, a second or two, one
round), and running them one after another, each in a subprocess of its own (and a process
group of its own, killed on a timeout) started from the repository root with this tree first on
`PYTHONPATH` (each script also puts it first itself: the gateway that runs is this tree's,
whatever checkout the virtualenv has installed). Prints one line per benchmark: `ok` or
`FAILED` and the seconds it took; a failure is an exit code other than 0, a timeout, a
traceback in its output or processes of its own left running after it exited, and the last
lines of its stderr follow. Exits 1 if any failed. Every script in `bench/` must be in the
table or in `RUN_BY` (a server another one runs), so that a new one is not left out unnoticed.

Never: measures anything. These runs are far too small for their figures to mean anything,
and nothing here reads them: it checks that the benchmarks run, not what they measure. The
whole run takes about four minutes on a 2-core machine (longer while other work shares it).
Some benchmarks pin themselves and their servers to cores 0 and 1 (`taskset`): it needs two.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# name (bench/NAME.py; NAME:what for a second form of one script), arguments, timeout in s
BENCHES: list[tuple[str, list[str], float]] = [
    ("pieces", [], 60),
    ("wire_frames", [], 60),
    ("metrics_overhead", [], 90),
    ("resample_cost", ["--seconds", "1", "--repeat", "1"], 60),
    ("resample_cold", ["--seconds", "0.5", "--repeat", "1"], 60),
    ("uplink_turn_delay", ["--batches", "40", "--rates", "24000"], 60),
    ("pacer_wakes", ["--players", "10", "--coalesce", "0", "--rounds", "1"], 60),
    ("pacer_wakes:long", ["--players", "5", "--rounds", "1", "--reply-s", "6"], 90),
    ("auth_handshake", ["--handshakes", "200"], 60),
    ("upstream_client", ["--messages", "2000", "--rounds", "1"], 60),
    ("replica_forwarding", ["--calls", "5", "--callbacks", "20"], 60),
    ("fuzz_live", ["--inputs", "2000"], 60),
    ("fuzz_live:bridged", ["--inputs", "2000", "--bridged"], 60),
    ("health_abuse", ["--hostile", "50", "--seconds", "2"], 60),
    (
        "soak",
        ["--concurrency", "4", "--duration", "5", "--warmup", "2", "--sample-every", "2"]
        + ["--call-seconds", "1,2", "--hostile"],
        90,
    ),
    (
        "soak:bridged",
        ["--concurrency", "4", "--duration", "5", "--warmup", "2", "--sample-every", "2"]
        + ["--call-seconds", "1,2", "--bridged"],
        90,
    ),
    (
        "soak:model-faults",
        ["--concurrency", "4", "--duration", "6", "--warmup", "2", "--sample-every", "2"]
        + ["--call-seconds", "2,5", "--bridged", "--model-faults", "--drop-share", "0.02"],
        90,
    ),
    ("echo_model", [], 30),  # prints its URL and stops: stdin is closed
    ("echo_load", ["--calls", "5", "--duration", "2"], 60),
    ("inline_audio", ["--calls", "5", "--rounds", "1", "--duration", "2"], 60),
    ("metrics_load", ["--calls", "5", "--duration", "2"], 60),
    ("records_load", ["--calls", "5", "--duration", "2", "--rounds", "1"], 90),
    ("records_load:pieces", ["--pieces"], 60),
    (
        "call_memory",
        ["--calls", "10", "--base", "5", "--hold", "1", "--runs", "1"]
        + ["--trace", "--trace-base", "3", "--trace-calls", "6", "--top", "5"],
        90,
    ),
    ("echo_profile", ["--calls", "5", "--duration", "2", "--no-strace", "--no-pyspy"], 60),
    ("workers_scaling", ["--sweep", "5", "--duration", "2", "--warmup", "1"], 90),
    (
        "compare_revisions",
        ["HEAD~1", "HEAD", "--calls", "5", "--rounds", "1", "--duration", "2"],
        90,
    ),
    ("simulator_capacity", ["--calls", "5", "--duration", "2", "--ramp", "1"], 60),
    (
        "fake_model_capacity",
        ["--calls", "5", "--duration", "4", "--turn-s", "2", "--reply-s", "1"],
        60,
    ),
    ("answer_load", ["--calls", "3", "--within", "1"], 90),
    ("bridge_cpu", ["--calls", "2", "--latency-runs", "1", "--tool-calls", "10"], 150),
    (
        "bridge_cpu:yardstick",
        ["--calls", "2", "--latency-runs", "0", "--tool-calls", "0", "--yardstick"],
        150,
    ),
    (
        "bridge_cpu:voicelive",
        ["--calls", "2", "--latency-runs", "0", "--tool-calls", "0", "--provider", "voice-live"],
        150,
    ),
    (
        "bridge_cpu:turns",
        [
            "--calls",
            "2",
            "--latency-runs",
            "0",
            "--tool-calls",
            "0",
            "--turns",
            "2",
            "--setup",
            "2",
        ],
        240,
    ),
    (
        "yardstick",
        ["--low", "5", "--high", "10", "--resolution", "5", "--cpu-at", "5"]
        + ["--duration", "1", "--warmup", "1"],
        270,
    ),
    (
        "yardstick:model-tls",
        ["--targets", "bridged24,asyncio-bridged24", "--model-tls", "--low", "5", "--high", "10"]
        + ["--resolution", "5", "--cpu-at", "5", "--duration", "1", "--warmup", "1"],
        150,
    ),
    (
        "yardstick:voicelive",
        ["--targets", "bridged16-voicelive", "--low", "5", "--high", "10", "--resolution", "5"]
        + ["--cpu-at", "5", "--duration", "1", "--warmup", "1"],
        120,
    ),
    (
        "yardstick:burst",
        ["--targets", "bridged24", "--model-burst-ms", "400", "--low", "5", "--high", "10"]
        + ["--resolution", "5", "--cpu-at", "5", "--duration", "1", "--warmup", "1"],
        120,
    ),
    ("tls_echo", ["--calls", "2", "--rounds", "1", "--window", "1", "--settle", "1"], 90),
    ("pacing_shape", ["--seconds", "2"], 60),
    ("reply_pacing", ["--calls", "3", "--seconds", "3", "--rounds", "1"], 90),
]
# Scripts that are servers run by another benchmark, not benchmarks to run on their own.
RUN_BY = {
    "asyncio_echo": "yardstick (its asyncio target), bridge_cpu --yardstick",
    "asyncio_bridge": "yardstick (its asyncio-bridged targets), bridge_cpu --yardstick",
}

TAIL = 8  # lines of stderr shown for a failure


def script(name: str) -> Path:
    return BENCH / f"{name.split(':')[0]}.py"


def unlisted() -> list[str]:
    listed = {script(name).stem for name, _, _ in BENCHES} | set(RUN_BY) | {"smoke"}
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in listed)


def run_one(name: str, argv: list[str], timeout: float) -> tuple[bool, str, float]:
    """Run one benchmark; (passed, why not, seconds)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    cmd = [sys.executable, str(script(name)), *argv]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: its servers and helpers are in it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        why = f"exit code {proc.returncode}" if proc.returncode else ""
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        why = f"timed out after {timeout:g} s"
    seconds = time.monotonic() - start
    if not why and "Traceback (most recent call last)" in out + err:
        why = "a traceback in its output"
    if left_running(proc.pid):
        why = why or "processes of its own left running (now killed)"
    if why:
        tail = "\n".join("        " + line for line in err.strip().splitlines()[-TAIL:])
        return False, why + (f"; its stderr ends:\n{tail}" if tail else ""), seconds
    return True, "", seconds


def kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def left_running(group: int) -> bool:
    """Whether processes of the benchmark's group outlived it by 2 s (then they are killed)."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            kill_group(group)
            return True
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated names from the table")
    args = parser.parse_args()
    benches = BENCHES
    if args.only:
        names = [name for name, _, _ in BENCHES]
        wanted = args.only.split(",")
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"not in the table: {', '.join(unknown)} (it has {', '.join(names)})")
        benches = [bench for bench in BENCHES if bench[0] in wanted]
    print(
        f"smoke: {len(benches)} benchmarks, each in its smallest form; this checks that they run,"
        " not what they measure (their figures mean nothing here)",
        flush=True,
    )
    failed: list[str] = []
    missing = [] if args.only else unlisted()
    if missing:
        print(f"FAILED  not in bench/smoke.py's table: {', '.join(missing)}", flush=True)
    started = time.monotonic()
    width = max(len(name) for name, _, _ in benches)
    for name, argv, timeout in benches:
        passed, why, seconds = run_one(name, argv, timeout)
        print(f"{'ok' if passed else 'FAILED':<7} {name:<{width}} {seconds:6.1f} s", flush=True)
        if not passed:
            failed.append(name)
            print(f"        {why}", flush=True)
    print(
        f"{len(benches) - len(failed)} of {len(benches)} ran in {time.monotonic() - started:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + (f"; not in the table: {', '.join(missing)}" if missing else "")
    )
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
