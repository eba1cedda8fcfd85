"""Echo per-frame CPU of two revisions of the gateway, alternated in one run on the same cores.

    python bench/compare_revisions.py OLD_REV NEW_REV --calls 200,300 --rounds 3 --duration 15

Each revision is checked out into a temporary worktree; the load generator is this tree's
`bench/echo_load.py` for both, so only the server differs. Runs alternate (A B, then B A, ...)
so that drift on a noisy machine falls on both sides alike. Prints each run and, per load, the
median server microseconds per echoed frame of each side and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
        check=True,
        capture_output=True,
    )
    return into


def run_load(
    root: Path, calls: int, duration: float, server_args: Sequence[str] = ()
) -> dict[str, float]:
    """One `bench/echo_load.py` run (this tree's generator) against the gateway of `root`,
    served with `server_args`; its RESULT."""
    cmd = [sys.executable, str(ROOT / "bench" / "echo_load.py"), "--calls", str(calls)]
    cmd += ["--duration", str(duration), "--gateway-root", str(root)]
    cmd += [f"--server-arg={arg}" for arg in server_args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [x for x in done.stderr.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT ")) if lines else {}


def alternate(
    run: Callable[[str, int], dict[str, float]],
    sides: tuple[str, str],
    loads: list[int],
    rounds: int,
) -> None:
    """Run every load on both sides, the order reversed each round, printing each run; then
    per load the median server microseconds per echoed frame of each side, first -> second."""
    us: dict[tuple[str, int], list[float]] = {}
    width = max(map(len, sides))
    for round_ in range(rounds):
        order = sides if round_ % 2 == 0 else sides[::-1]
        for calls in loads:
            for side in order:
                r = run(side, calls)
                value = r.get("server_us_per_frame", float("nan"))
                us.setdefault((side, calls), []).append(value)
                print(
                    f"round {round_ + 1} {side:>{width}} {calls:>4} calls: {value:6.1f} us/frame,"
                    f" p99 {r.get('rtt_p99_ms')} ms, lost {r.get('frames_lost')},"
                    f" {r.get('server_rss_per_call_kb')} KB/call",
                    flush=True,
                )
    print(f"\nmedian us/frame  {sides[0]} -> {sides[1]}")
    for calls in loads:
        first = statistics.median(us[(sides[0], calls)])
        second = statistics.median(us[(sides[1], calls)])
        change = (second / first - 1) * 100
        print(f"{calls:>5} calls: {first:6.1f} -> {second:6.1f}  ({change:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--calls", default="200,300", help="comma-separated loads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    loads = [int(x) for x in args.calls.split(",")]
    with tempfile.TemporaryDirectory(prefix="gw-ab-") as tmp:
        trees = {
            "old": checkout(args.old, Path(tmp) / "old"),
            "new": checkout(args.new, Path(tmp) / "new"),
        }
        print(f"old: {args.old}, new: {args.new}", flush=True)
        try:
            alternate(
                lambda side, calls: run_load(trees[side], calls, args.duration),
                ("old", "new"),
                loads,
                args.rounds,
            )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                )


if __name__ == "__main__":
    main()
