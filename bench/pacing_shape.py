"""Which of a bot's frames the pacer must release, when the model's audio comes at real time.

    python bench/pacing_shape.py
    python bench/pacing_shape.py --delta-ms 20,40,100 --seconds 16

`bench/yardstick.py`'s fake model answers each 40 ms append at once, so a bridged call's reply
arrives at exactly the rate ACS plays it. This replays that on the gateway's own playout clock
(`gateway.call.playout.Playout`, sans-IO, no sockets): speech in deltas of `--delta-ms`, one
every `--delta-ms`, resampled to the call's rate as the bridge does
(`gateway.audio.resample.StreamResampler`), queued, and released as the player releases it: what
is due when a delta arrives goes with it (one write), the rest at the pacer's deadlines (a
wake-up and a write each). Prints, per rate and delta size, the frames released on arrival,
those the pacer released, and how many of each kind were shorter than 20 ms. Numbers only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio.resample import StreamResampler  # noqa: E402
from gateway.call.playout import Playout  # noqa: E402
from gateway.testing import speech  # noqa: E402

MODEL_RATE = 24000


def replay(rate: int, delta_ms: int, seconds: float) -> dict[str, int]:
    playout = Playout(rate)  # the default lead and catch-up, as a call has them
    resampler = StreamResampler(MODEL_RATE, rate)
    voice = speech(MODEL_RATE)
    size = MODEL_RATE * 2 * delta_ms // 1000
    period = delta_ms / 1000
    counts = {"on arrival": 0, "paced": 0, "short on arrival": 0, "short paced": 0}
    for k in range(int(seconds / period)):
        arrival = k * period
        start = k * size % (len(voice) - size)
        playout.enqueue(resampler.process(voice[start : start + size]), "reply")
        for frame in playout.release_due(arrival):
            counts["on arrival"] += 1
            counts["short on arrival"] += len(frame) < playout.frame_bytes
        now = arrival
        while (due := playout.next_due(now)) is not None and due < arrival + period:
            now = max(now, due)
            for frame in playout.release_due(now):
                counts["paced"] += 1
                counts["short paced"] += len(frame) < playout.frame_bytes
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delta-ms", default="40,100", help="the model's delta sizes")
    parser.add_argument("--seconds", type=float, default=16.0)
    args = parser.parse_args()
    print(
        f"{'rate':>6} {'delta ms':>8} {'on arrival':>10} {'paced':>6} {'paced %':>7} "
        f"{'short on arrival':>16} {'short paced':>11}"
    )
    for rate in (16000, 24000):
        for delta_ms in (int(d) for d in args.delta_ms.split(",")):
            c = replay(rate, delta_ms, args.seconds)
            share = 100 * c["paced"] / max(1, c["paced"] + c["on arrival"])
            print(
                f"{rate:>6} {delta_ms:>8} {c['on arrival']:>10} {c['paced']:>6} {share:>6.0f}% "
                f"{c['short on arrival']:>16} {c['short paced']:>11}"
            )


if __name__ == "__main__":
    main()
