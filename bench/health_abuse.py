"""Probe latency of the health endpoint while hostile clients hold connections against it.

    python bench/health_abuse.py --hostile 2000 --seconds 20

Starts the health endpoint (`gateway.ops.health.serve_health`, default limits) in a process of
its own, then a hostile process holding `--hostile` connections to it, a third each of:
idle (connect, send nothing), slowloris (a byte of a request every second) and keep-alive spam
(one request every 4 s on a reused connection); each reconnects as soon as the endpoint drops
it, so that many are always open or opening. Meanwhile this process probes like kubelet: a new
connection, `GET /livez` or `GET /readyz`, every 100 ms, and prints the probes' latency
(p50/p99/max), how many failed, and how many hostile connections were made.
A probe that takes over 1 s counts as a failure, as kubelet's default `timeoutSeconds` would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import trio

from gateway.ops.health_limits import HealthLimits

SERVER = """
import sys, trio
from functools import partial
from gateway.ops.health import serve_health
from gateway.ops.health_limits import HealthLimits
limits = HealthLimits(max_connections=int(sys.argv[1]))
async def main():
    async with trio.open_nursery() as nursery:
        ready = lambda: (True, "ready")
        serve = partial(serve_health, limits=limits)
        port = await nursery.start(serve, "127.0.0.1", 0, ready)
        print(port, flush=True)
trio.run(main)
"""
PROBE_TIMEOUT = 1.0  # kubelet's default timeoutSeconds


async def hostile(port: int, count: int, seconds: float) -> None:
    """Hold `count` hostile connections for `seconds`; print how many were made."""
    made = [0]

    async def one(kind: int) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            made[0] += 1
            try:
                async with stream:
                    if kind == 0:  # idle
                        await stream.receive_some(1000)
                    elif kind == 1:  # slowloris
                        for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 1000:
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(1)
                    else:  # keep-alive spam
                        while True:
                            await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                            if not await stream.receive_some(1000):
                                break
                            await trio.sleep(4)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(one, n % 3)
                if n % 100 == 99:
                    await trio.sleep(0.01)  # the kernel's accept queue is finite
    print(made[0], flush=True)


async def probe(port: int, path: str) -> float | None:
    """Seconds for one probe on a new connection; None if it failed or took over 1 s."""
    start = time.perf_counter()
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                await stream.send_all(request.encode())
                data = b""
                while chunk := await stream.receive_some(4096):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200 "):
                return time.perf_counter() - start
        except (OSError, trio.BrokenResourceError):
            pass
    return None


async def measure(port: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    deadline = trio.current_time() + seconds
    n = 0
    while trio.current_time() < deadline:
        result = await probe(port, ("/livez", "/readyz")[n % 2])
        n += 1
        if result is None:
            failures += 1
        else:
            latencies.append(result)
        await trio.sleep(0.1)
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hostile", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-connections", type=int, default=HealthLimits().max_connections)
    parser.add_argument("--hostile-only", type=int, help=argparse.SUPPRESS)  # the child's port
    args = parser.parse_args()
    if args.hostile_only:
        trio.run(hostile, args.hostile_only, args.hostile, args.seconds + 6)
        return
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.max_connections)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    attack = None
    try:
        if args.hostile:
            attack = subprocess.Popen(
                [sys.executable, __file__, "--hostile-only", str(port)]
                + ["--hostile", str(args.hostile), "--seconds", str(args.seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(5)  # let the connections open
        latencies, failures = trio.run(measure, port, args.seconds)
    finally:
        if attack is not None:
            made = attack.communicate(timeout=60)[0].strip() or "?"
        server.terminate()
        server.wait()
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan")
    print(
        f"hostile={args.hostile} max_connections={args.max_connections} "
        f"probes={len(ms) + failures} failed={failures} "
        f"p50={statistics.median(ms) if ms else float('nan'):.1f}ms p99={p99:.1f}ms "
        f"max={max(ms, default=float('nan')):.1f}ms "
        f"hostile_connections_made={made if args.hostile else 0} cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
