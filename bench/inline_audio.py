"""What an inline audio handler saves: echo as shipped (its handler plays each frame from the
call's receive task) against the same echo reading `call.packets` (each frame through the
inbound channel to the processor's task), alternated in one run, same tree, same cores.

    python bench/inline_audio.py --calls 50,200 --rounds 3 --duration 10

Each run is `bench/echo_load.py` with a fresh server (gateway on core 0, generator on core 1);
the second processor is this module's `make`, served with `--processor
bench.inline_audio:make`. Prints each run and, per load, the medians of the server's
microseconds per echoed frame and their ratio. Nothing is lost in a healthy run: a run that
loses frames is past the knee and says little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIDES = {"inline": [], "packets": ["--processor", "bench.inline_audio:make"]}


def make(options: Mapping[str, Any]) -> Any:
    """Echo without its inline handler: a plain coroutine around echo's own, which plays the
    audio it reads from `call.packets`."""
    from gateway.processors import Call, echo

    inner = echo.make(options)

    async def echo_via_packets(call: Call) -> None:
        await inner(call)

    return echo_via_packets


def run_load(side: str, calls: int, duration: float) -> dict[str, float]:
    cmd = [sys.executable, str(ROOT / "bench" / "echo_load.py"), "--calls", str(calls)]
    cmd += ["--duration", str(duration)]
    cmd += [f"--server-arg={arg}" for arg in SIDES[side]]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [x for x in done.stderr.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT ")) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="50,200", help="comma-separated loads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    loads = [int(x) for x in args.calls.split(",")]
    us: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        order = ("packets", "inline") if round_ % 2 == 0 else ("inline", "packets")
        for calls in loads:
            for side in order:
                r = run_load(side, calls, args.duration)
                value = r.get("server_us_per_frame", float("nan"))
                us.setdefault((side, calls), []).append(value)
                print(
                    f"round {round_ + 1} {side:>7} {calls:>4} calls: {value:6.1f} us/frame,"
                    f" p99 {r.get('rtt_p99_ms')} ms, lost {r.get('frames_lost')},"
                    f" {r.get('server_rss_per_call_kb')} KB/call",
                    flush=True,
                )
    print("\nmedian us/frame  via packets -> inline")
    for calls in loads:
        via_packets = statistics.median(us[("packets", calls)])
        inline = statistics.median(us[("inline", calls)])
        change = (inline / via_packets - 1) * 100
        print(f"{calls:>5} calls: {via_packets:6.1f} -> {inline:6.1f}  ({change:+.1f}%)")


if __name__ == "__main__":
    main()
