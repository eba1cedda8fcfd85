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
The hostile clients connect from `--attacker-from` (127.0.0.2 by default: kubelet probes from
the node's address, not the attacker's; 127.0.0.1 puts them on the prober's own address).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.ops.health_limits import HealthLimits  # noqa: E402

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


async def hostile(port: int, count: int, seconds: float, sources: list[str]) -> None:
    """Hold `count` hostile connections for `seconds`; print how many were made."""
    made = [0]

    async def one(kind: int, source: str) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
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
                nursery.start_soon(one, n % 3, sources[n % len(sources)])
                if n % 100 == 99:
                    await trio.sleep(0.01)  # the kernel's accept queue is finite
    print(made[0], flush=True)


async def probe(port: int, path: str) -> float | str:
    """Seconds for one probe on a new connection, or why it failed: `timeout` (over 1 s),
    `reset` (the connection was refused or dropped) or `status` (an answer other than 200)."""
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
        except (OSError, trio.BrokenResourceError):
            return "reset"
        if data.startswith(b"HTTP/1.1 200 "):
            return time.perf_counter() - start
        return "status" if data else "reset"
    return "timeout"


async def measure(port: int, seconds: float) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    deadline = trio.current_time() + seconds
    n = 0
    while trio.current_time() < deadline:
        result = await probe(port, ("/livez", "/readyz")[n % 2])
        n += 1
        if isinstance(result, str):
            failures[result] += 1
        else:
            latencies.append(result)
        await trio.sleep(0.1)
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hostile", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-connections", type=int, default=HealthLimits().max_connections)
    parser.add_argument(
        "--attacker-from",
        default="127.0.0.2",
        help="the hostile clients' source address (127.0.0.1: the same as the prober's)",
    )
    parser.add_argument(
        "--attacker-addresses",
        type=int,
        default=1,
        help="spread the hostile clients over this many addresses, from --attacker-from on",
    )
    parser.add_argument("--hostile-only", type=int, help=argparse.SUPPRESS)  # the child's port
    args = parser.parse_args()
    if args.hostile_only:
        first = ipaddress.IPv4Address(args.attacker_from)
        sources = [str(first + n) for n in range(args.attacker_addresses)]
        trio.run(hostile, args.hostile_only, args.hostile, args.seconds + 6, sources)
        return
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.max_connections)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    attack = None
    try:
        if args.hostile:
            attack = subprocess.Popen(
                [sys.executable, __file__, "--hostile-only", str(port)]
                + ["--hostile", str(args.hostile), "--seconds", str(args.seconds)]
                + ["--attacker-from", args.attacker_from]
                + ["--attacker-addresses", str(args.attacker_addresses)],
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
        f"probes={len(ms) + failures.total()} failed={failures.total()} "
        f"({', '.join(f'{kind} {n}' for kind, n in sorted(failures.items())) or 'none'}) "
        f"p50={statistics.median(ms) if ms else float('nan'):.1f}ms p99={p99:.1f}ms "
        f"max={max(ms, default=float('nan')):.1f}ms "
        f"hostile_connections_made={made if args.hostile else 0} "
        f"attacker_from={args.attacker_from} x{args.attacker_addresses} cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
