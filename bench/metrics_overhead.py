"""What the metrics cost the event loop: per frame, per flush, per scrape.

    python bench/metrics_overhead.py

Prints medians of several runs (microseconds unless marked):
- the per-frame additions on the hot path: the processor's inbound hop through the timing
  wrapper (`TimedPackets`, which also takes one clock reading and one `LocalHistogram`
  observation) against the bare memory channel, and the receive task's arrival-time append;
- why per-frame work does not go to prometheus-client directly: `Counter.inc()` and
  `Histogram.observe()` against `LocalHistogram.observe()`;
- `Metrics.flush()` with N live calls that all changed since the last flush (it runs once a
  second and before each scrape), and a whole scrape (`Metrics.exposition()`), both of which
  run on the event loop.
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.call.intake import TimedPackets  # noqa: E402
from gateway.ops.metrics import LATENCY_BUCKETS, Metrics  # noqa: E402
from gateway.ops.series import LocalHistogram  # noqa: E402
from gateway.server import ServerStats  # noqa: E402

N = 200_000
REPEAT = 5
# Packets waiting in a call's inbound channel at once: a few at most (none, mostly), so the
# arrival times are a short list (gateway.call.intake).
HELD = 4


def per_op_us(fn, number: int = N) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=REPEAT)) / number * 1e6


async def channel_hop_us(timed: bool) -> float:
    """Per packet: the processor taking packets from a channel that holds `HELD` at a time."""
    send, receive = trio.open_memory_channel[object](HELD)
    arrivals: list[float] = []  # the receive task's arrival times, as in a live call
    local = LocalHistogram(LATENCY_BUCKETS)
    take = (TimedPackets(receive, arrivals, local.observe) if timed else receive).__anext__
    now = trio.current_time()
    elapsed = 0.0
    for _ in range(N // HELD):
        for i in range(HELD):
            send.send_nowait(i)
        if timed:
            arrivals += [now] * HELD
        start = time.perf_counter()
        for _ in range(HELD):
            await take()
        elapsed += time.perf_counter() - start
    return elapsed / N * 1e6


async def channel_hops_us() -> tuple[float, float]:
    """Per packet, bare and timed: the medians of `REPEAT` runs of each, alternated (after one
    of each that is not counted). Measured one side after the other, the side measured first
    paid the process's warm-up and the machine's drift, and the timed hop came out 1.5 us
    faster than the bare one."""
    runs: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(REPEAT + 1):
        for timed in (False, True) if round_ % 2 else (True, False):
            us = await channel_hop_us(timed)
            if round_:
                runs[timed].append(us)
    return statistics.median(runs[False]), statistics.median(runs[True])


def flush_ms(live_calls: int) -> tuple[float, float]:
    stats = ServerStats()
    metrics = Metrics()
    metrics.follow(stats.totals)
    calls = [stats.call_started() for _ in range(live_calls)]
    flushes, scrapes = [], []
    for _ in range(REPEAT):
        for s in calls:  # a second of audio on every call: everything changed
            s.audio_frames_in += 50
            s.messages_out += 50
            s.protocol_errors["not_json"] += 1
        for _ in range(50 * live_calls // 100):
            metrics.processing.observe(0.0003)
        start = time.perf_counter()
        metrics.flush()
        flushes.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        metrics.exposition()
        scrapes.append((time.perf_counter() - start) * 1000)
    return statistics.median(flushes), statistics.median(scrapes)


def main() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    histogram = Histogram("h", "h", registry=registry, buckets=LATENCY_BUCKETS)
    local = LocalHistogram(LATENCY_BUCKETS)
    arrivals: list[float] = []  # as the receive task appends to it (gateway.call.intake)
    bare, timed = trio.run(channel_hops_us)
    rows = [
        ("hot path, per frame (us)", None),
        ("  processor hop, bare memory channel", bare),
        ("  processor hop, timed (TimedPackets)", timed),
        ("    difference", timed - bare),
        ("  receive task: arrival-time append", per_op_us(lambda: arrivals.append(1.0))),
        ("per observation (us)", None),
        ("  prometheus Counter.inc()", per_op_us(counter.inc)),
        ("  prometheus Histogram.observe()", per_op_us(lambda: histogram.observe(3e-4))),
        ("  LocalHistogram.observe()", per_op_us(lambda: local.observe(3e-4))),
    ]
    for title, us in rows:
        print(title if us is None else f"{title:<42}{us:7.3f}")
    print("per flush / scrape on the event loop (ms), all live calls changed")
    for live in (100, 250, 1000):
        flush, scrape = flush_ms(live)
        print(f"  {live:5d} live calls: flush {flush:6.3f}   scrape {scrape:6.3f}")


if __name__ == "__main__":
    main()
