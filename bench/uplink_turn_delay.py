"""What `uplink_batch_ms` costs in latency: how much later the model hears the caller stop.

    python bench/uplink_turn_delay.py
    python bench/uplink_turn_delay.py --batches 20,40,80 --rates 16000

In virtual time (Trio's autojump clock), so the figures are exact and the run takes seconds: a
caller says 2 s of words and then is silent, through the gateway's realtime processor, to
`gateway.testing`'s fake model, whose turn detection sends `input_audio_buffer.speech_stopped`
after 500 ms of silence heard. The words end at ten points 20 ms apart (every phase of a batch),
and for each batch size and rate it prints how long after the words' end `speech_stopped` came:
the least, the mean and the most. The model's own 500 ms, and its threshold, are the same in
every row; the differences between rows are what the batch adds before a reply can start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's gateway
from gateway.processors import load  # noqa: E402
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech  # noqa: E402

KEY_ENV = "BENCH_REALTIME_KEY"


async def turn_end_heard_after(rate: int, batch_ms: int, lead_ms: int) -> float:
    """Milliseconds from the end of the caller's words to the model's `speech_stopped`."""
    async with open_fake_model([speech(24000)[:48000]], silence_ms=500) as model:
        options = {"endpoint": model.url, "api_key_env": KEY_ENV, "uplink_batch_ms": batch_ms}
        async with open_gateway(load("realtime", options)) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                words = bytes(rate * 2 * lead_ms // 1000) + speech(rate)[: rate * 2 * 2]
                started = trio.current_time()
                await acs.stream(words + bytes(rate * 2 * 2))
    stops = model.sent_of("input_audio_buffer.speech_stopped")
    if not stops:
        raise SystemExit("the fake model never heard the caller stop")
    return (stops[0].time - started - len(words) / (rate * 2)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="20,40,60,80,200", help="uplink_batch_ms values")
    parser.add_argument("--rates", default="16000,24000")
    args = parser.parse_args()
    os.environ[KEY_ENV] = "bench-key"
    header = f"{'rate':>6} {'batch ms':>8} {'least':>6} {'mean':>6} {'most':>6}"
    print(header + "  (ms after the words end)")
    for rate in map(int, args.rates.split(",")):
        for batch_ms in map(int, args.batches.split(",")):
            delays = [
                trio.run(
                    turn_end_heard_after,
                    rate,
                    batch_ms,
                    lead_ms,
                    clock=trio.testing.MockClock(autojump_threshold=0),
                )
                for lead_ms in range(0, 200, 20)
            ]
            mean = sum(delays) / len(delays)
            print(f"{rate:>6} {batch_ms:>8} {min(delays):>6.0f} {mean:>6.0f} {max(delays):>6.0f}")


if __name__ == "__main__":
    main()
