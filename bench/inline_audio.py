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
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from compare_revisions import alternate, run_load  # noqa: E402

SIDES = {"inline": [], "packets": ["--processor", "bench.inline_audio:make"]}


def make(options: Mapping[str, Any]) -> Any:
    """Echo without its inline handler: a plain coroutine around echo's own, which plays the
    audio it reads from `call.packets`."""
    from gateway.processors import Call, echo

    inner = echo.make(options)

    async def echo_via_packets(call: Call) -> None:
        await inner(call)

    return echo_via_packets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="50,200", help="comma-separated loads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    alternate(
        lambda side, calls: run_load(ROOT, calls, args.duration, SIDES[side]),
        ("packets", "inline"),
        [int(x) for x in args.calls.split(",")],
        args.rounds,
    )


if __name__ == "__main__":
    main()
