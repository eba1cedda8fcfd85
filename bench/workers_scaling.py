"""1 worker versus N: the knee of each, with the same load generator and the same settings.

    python bench/workers_scaling.py --sweep 150,200,250,300,350,400,450 --duration 10

For each worker count (`--workers 1,2`) and each load, a fresh `python -m gateway serve
--workers W` is started and `bench/echo_load.py`'s generator drives N real-time echo calls
against it. The knee of a worker count is the most calls whose p99 round trip stays within
`--p99-ms` with no frame lost. The scaling is the ratio of the knees.

CPU placement, stated because on a small machine it decides the answer:
- 1 worker: the gateway is pinned to core 0 and the generator to core 1 (as echo_load.py does).
- W workers: the gateway may use every core in `--server-cpus`, and so may the generator
  (`--client-cpus`, default: the same cores). On a 2-core machine the generator then competes
  with the workers for the cores, so "2 workers on 2 cores" really means "2 workers on what
  the generator leaves"; the generator's own CPU is printed for every run, so the share it
  took is visible. On a machine with spare cores, give it its own with `--client-cpus`.

Prints one row per run (calls, p50/p99/max, lost, gateway CPU summed over the supervisor and
its workers, generator CPU), then each worker count's knee and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import echo_load  # noqa: E402  (the generator and /proc readers, shared with echo_load.py)


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (the supervisor's workers), whichever thread started them."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += echo_load.proc_cpu_seconds(pid)
        except OSError:
            pass
    return total


def one_run(args: argparse.Namespace, workers: int, calls: int) -> dict[str, float]:
    if workers == 1:
        server_cpus, client_cpus = args.single_server_cpu, args.single_client_cpu
    else:
        server_cpus, client_cpus = args.server_cpus, args.client_cpus or args.server_cpus
    os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
    # taskset takes a core list as well as one core; the supervisor binds every worker's
    # socket before it starts them, so calls opened before the last worker is up just wait.
    proc, url = echo_load.start_server(server_cpus, ["--workers", str(workers)])  # type: ignore[arg-type]
    try:
        pids = process_tree(proc.pid)
        marks: dict[str, float] = {}
        gen = echo_load.Generator(url, calls, args.rate, args.phases)
        gen.server_start = lambda: marks.update(cpu0=tree_cpu_seconds(pids))  # type: ignore[method-assign]
        gen.server_stop = lambda: marks.update(cpu1=tree_cpu_seconds(pids))  # type: ignore[method-assign]
        result = gen.run(args.warmup, args.duration)
        gen.close()
        cpu = marks["cpu1"] - marks["cpu0"]
        result["workers"] = workers
        result["server_cpu_pct"] = round(100 * cpu / result["window_s"], 1)
        result["server_us_per_frame"] = round(cpu / max(1, result["frames_echoed"]) * 1e6, 1)
        del result["_echoed_all"]
        return result
    finally:
        echo_load.stop_process(proc, 15)


COLUMNS = [
    ("workers", "workers"),
    ("calls", "calls"),
    ("rtt_p50_ms", "p50 ms"),
    ("rtt_p99_ms", "p99 ms"),
    ("rtt_max_ms", "max ms"),
    ("frames_lost", "lost"),
    ("server_cpu_pct", "gw cpu%"),
    ("server_us_per_frame", "us/frame"),
    ("client_cpu_pct", "gen cpu%"),
    ("ticker_late_p99_ms", "tick p99 ms"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--sweep", default="150,200,250,300,350,400", help="calls per run")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--p99-ms", type=float, default=20.0, help="the knee's p99 bound")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--single-server-cpu", default="0", help="1 worker: gateway core")
    parser.add_argument("--single-client-cpu", default="1", help="1 worker: generator core")
    parser.add_argument("--server-cpus", default="0,1", help="N workers: gateway cores")
    parser.add_argument("--client-cpus", help="N workers: generator cores (default: the same)")
    parser.add_argument(
        "--stop-after-knee", action="store_true", help="skip larger loads once one fails"
    )
    args = parser.parse_args()
    loads = [int(x) for x in args.sweep.split(",")]
    knees: dict[int, int] = {}
    print(" ".join(f"{title:>11}" for _, title in COLUMNS), flush=True)
    for workers in (int(w) for w in args.workers.split(",")):
        knees[workers] = 0
        for calls in loads:
            r = one_run(args, workers, calls)
            print(" ".join(f"{r.get(key, float('nan')):>11}" for key, _ in COLUMNS), flush=True)
            print("RESULT " + json.dumps(r), file=sys.stderr, flush=True)
            within = r["rtt_p99_ms"] <= args.p99_ms and r["frames_lost"] == 0 and not r["errors"]
            if within:
                knees[workers] = max(knees[workers], calls)
            elif args.stop_after_knee:
                break
    print()
    for workers, knee in knees.items():
        print(f"knee with {workers} worker(s): {knee} calls (p99 <= {args.p99_ms} ms, 0 lost)")
    if 1 in knees and knees[1]:
        for workers, knee in knees.items():
            if workers != 1:
                print(f"scaling {workers} workers / 1: {knee / knees[1]:.2f}x")
    print(f"cores: {os.cpu_count()}; load average now: {os.getloadavg()}")


if __name__ == "__main__":
    main()
