"""What serving ACS's `wss://` in the gateway costs: echo calls over TLS next to the same over TCP.

    python bench/tls_echo.py                         # 40 calls, ws and wss alternated, 2 rounds
    python bench/tls_echo.py --calls 80 --rounds 3
    python bench/tls_echo.py --root ../before        # the gateway from another tree as well (A/B)

Each step starts a fresh gateway (echo, pinned to core 0), with a certificate from a throwaway
CA (`trustme`) for `wss://`, and drives `--calls` echo calls at 16 kHz with `acs-media-gateway
simulate` (pinned to core 1; it trusts the CA with `--ca-file`). The gateway's CPU is read from
/proc over the middle `--window` seconds of the calls. Prints, per step, the gateway's CPU per
inbound frame, its share of the core, and what the simulator saw (frames lost, errors, the echo
round trip's p99), then the median per kind. The echo benchmarks' own generator
(`echo_load.py`) does not speak TLS, so this one uses the simulator: figures compare between
the rows of one run, not with `echo_load.py`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from echo_load import ROOT, proc_cpu_seconds, start_server  # noqa: E402


def throwaway_certificate(folder: Path) -> dict[str, str]:
    """cert.pem, key.pem and ca.pem for 127.0.0.1 in `folder`; the gateway's TLS settings."""
    import trustme  # the `test` extra

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    issued.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return {
        "ACS_GATEWAY_TLS_CERTFILE": str(folder / "cert.pem"),
        "ACS_GATEWAY_TLS_KEYFILE": str(folder / "key.pem"),
    }


def step(args: argparse.Namespace, root: Path, tls: dict[str, str] | None, ca: Path) -> dict:
    """One gateway, one simulated load; the gateway's CPU over the middle of it."""
    saved = {k: os.environ.get(k) for k in (tls or {})}
    os.environ.update(tls or {})
    try:
        proc, url = start_server(args.server_cpu, ["--processor", "echo"], root)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    duration = args.window + 2 * args.settle + args.ramp
    cmd = ["taskset", "-c", str(args.client_cpu), sys.executable, "-m", "gateway", "simulate"]
    cmd += [url + "/", "--calls", str(args.calls), "--duration", str(duration)]
    cmd += ["--ramp", str(args.ramp), "--json", "--quiet"] + (["--ca-file", str(ca)] if tls else [])
    try:
        with report.open("w") as out:
            sim = subprocess.Popen(cmd, stdout=out, cwd=ROOT)
            time.sleep(args.ramp + args.settle)
            cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.window)
            cpu1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
            sim.wait()
    finally:
        proc.terminate()
        proc.wait()
    totals = json.loads(report.read_text())["totals"]
    frames = args.calls * 50 * (t1 - t0)
    return {
        "us": (cpu1 - cpu0) / frames * 1e6,
        "pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "lost": totals.get("lost"),
        "errors": totals.get("errors"),
        "rtt_p99_ms": totals.get("rtt_p99_ms"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per step")
    parser.add_argument("--ramp", type=float, default=4.0)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after the ramp")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--root", type=Path, help="also run the gateway from this tree (wss://)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tls-echo-"))
    tls = throwaway_certificate(folder)
    kinds: list[tuple[str, Path, dict[str, str] | None]] = [("ws", ROOT, None), ("wss", ROOT, tls)]
    if args.root is not None:
        kinds.append((f"wss, {args.root}", args.root, tls))
    results: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    for round_ in range(args.rounds):
        for name, root, settings in kinds if round_ % 2 == 0 else reversed(kinds):
            r = step(args, root, settings, folder / "ca.pem")
            results[name].append(r["us"])
            print(
                f"{name:>24}: {r['us']:6.1f} us per inbound frame, {r['pct']:5.1f}% of a core;"
                f" simulator: lost {r['lost']}, errors {r['errors']}, p99 {r['rtt_p99_ms']} ms",
                flush=True,
            )
    for name, values in results.items():
        print(f"{name:>24}: median {statistics.median(values):.1f} us per inbound frame")


if __name__ == "__main__":
    main()
