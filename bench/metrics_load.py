"""Are the metrics right under load? N real-time echo calls, then the gateway's /metrics against
what the load generator counted itself.

    python bench/metrics_load.py --calls 100 --duration 10
    python bench/metrics_load.py --sweep 100,200 --duration 10

Uses `bench/echo_load.py`'s generator and server start-up (the gateway pinned to one core,
the generator to the other), with the health endpoint on. After the run every call hangs up;
once `/metrics` shows no live call, it prints, per metric, the gateway's number, the
generator's, and whether they match:

- audio_frames_in_total: AudioData frames the generator sent (every one, ramp-up included);
- audio_frames_out_total: echoed frames the generator received (it reads for 1 s after its last
  frame, so on an overloaded gateway a late echo may be sent but never read: "out >= echoed");
- calls_accepted_total and calls_ended_total{ended_by="hangup"}: the calls it opened;
- processing_latency_seconds_count (one per frame the processor took) plus the frames dropped
  by policy (an overloaded gateway drops inbound audio the processor cannot keep up with):
  together, every frame in;
- and the echo round trip alongside, to show the load was real.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_load  # noqa: E402  (the generator and server start-up, shared with echo_load.py)


class CountingSocket:
    """A call's socket that counts the audio frames sent on it (the generator's own count)."""

    __slots__ = ("sock", "frame_len", "frames", "partial")

    def __init__(self, sock: socket.socket, frame_len: int) -> None:
        self.sock = sock
        self.frame_len = frame_len
        self.frames = 0
        self.partial = 0

    def send(self, data: bytes) -> int:
        n = self.sock.send(data)
        if len(data) == self.frame_len:
            self.frames += n == len(data)
            self.partial += n != len(data)
        return n

    def __getattr__(self, name: str):  # recv, fileno, setblocking, close
        return getattr(self.sock, name)


class CountingGenerator(echo_load.Generator):
    def open_call(self, index: int) -> None:
        super().open_call(index)
        call = self.calls[-1]
        call.sock = CountingSocket(call.sock, len(call.frames[0]))  # type: ignore[assignment]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def one_load(args: argparse.Namespace, calls: int) -> bool:
    health = free_port()
    os.environ["ACS_GATEWAY_HEALTH_HOST"] = "127.0.0.1"
    proc, url = echo_load.start_server(args.server_cpu, ["--health-port", str(health)])
    try:
        gen = CountingGenerator(url, calls, args.rate, args.phases)
        result = gen.run(args.warmup, args.duration)
        gen.close()
        deadline = time.monotonic() + 20
        while True:
            m = scrape(health)
            if m[("acs_gateway_live_calls", ())] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    sent = sum(c.sock.frames for c in gen.calls)
    partial = sum(c.sock.partial for c in gen.calls)
    echoed = sum(c.echoed for c in gen.calls)

    def got(name: str, **labels: str) -> int:
        return int(m[(f"acs_gateway_{name}", tuple(sorted(labels.items())))])

    rows = [
        ("audio_frames_in_total", got("audio_frames_in_total"), sent, "=="),
        ("audio_frames_out_total", got("audio_frames_out_total"), echoed, ">="),
        ("calls_accepted_total", got("calls_accepted_total"), calls, "=="),
        ("calls_ended_total{hangup}", got("calls_ended_total", ended_by="hangup"), calls, "=="),
        # every frame in was either taken by the processor (and timed) or dropped by policy
        (
            "processing_count + dropped",
            got("processing_latency_seconds_count")
            + got("frames_dropped_total", policy="inbound_queue_full")
            + got("frames_dropped_total", policy="unread_at_end"),
            sent,
            "==",
        ),
        ("live_calls", got("live_calls"), 0, "=="),
    ]
    dropped = got("frames_dropped_total", policy="inbound_queue_full")
    print(
        f"{calls} calls, {args.duration:.0f} s: {dropped} frames dropped by policy, "
        f"echo p50 {result['rtt_p50_ms']} ms, "
        f"p99 {result['rtt_p99_ms']} ms, lost {result['frames_lost']}, "
        f"generator ticker p99 late {result['ticker_late_p99_ms']} ms, partial sends {partial}"
    )
    print(f"  {'metric':<30}{'gateway':>10}{'generator':>11}  check")
    ok = True
    for name, gateway, generator, rule in rows:
        good = gateway == generator if rule == "==" else gateway >= generator
        ok &= good
        print(f"  {name:<30}{gateway:>10}{generator:>11}  {rule} {'ok' if good else 'MISMATCH'}")
    if got("audio_frames_out_total") != echoed:
        print(f"  ({got('audio_frames_out_total') - echoed} echoes sent but not read before close)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sweep", help="comma-separated call counts, one fresh server each")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    loads = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.calls]
    results = [one_load(args, calls) for calls in loads]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
