"""The gateway next to a minimal asyncio server: per-frame CPU, knee and RSS per call, one run.

    python bench/yardstick.py                                   # everything (about 12-20 minutes)
    python bench/yardstick.py --targets echo,asyncio --duration 5 --low 100 --high 700

Every target is measured on the same pinned cores: the server on core 0 (`--server-cpu`), this
process (`bench/echo_load.py`'s generator: epoll, pre-built masked frames, one shared ticker) and
the fake model on core 1 (`--client-cpu`). Targets:

- `echo`: `python -m gateway serve` with the echo processor.
- `asyncio`: the yardstick, `bench/asyncio_echo.py` (asyncio + `websockets`, as Microsoft's
  samples are built).
- `bridged16`, `bridged24`: the gateway's realtime processor at 16 kHz (resampled both ways) and
  24 kHz (passed through), against `gateway.testing`'s fake model in its own process
  (`bench/echo_model.py`: it answers every appended chunk at once, so audio flows both ways).
- `bridged16-voicelive` (only when named in `--targets`): the realtime processor at 16 kHz
  configured for Azure AI Voice Live, which takes and gives 16 kHz, so nothing is resampled.
- `asyncio-bridged16`, `asyncio-bridged24`: the bridged yardstick, `bench/asyncio_bridge.py`
  (a minimal asyncio + `websockets` bridge in the shape of Microsoft's samples), against the
  same fake model. Their `x echo` column is against the `asyncio` target, the gateway's against
  `echo`.

Every frame's PCM is one constant level that says its sequence number, read back from every
returned packet (a resampled path returns packets of any length), so a round trip is timed the
same way through a resampler: from sending a frame to the first packet carrying it. For each
target it prints: CPU per frame (the server's CPU over the window per inbound frame sent: one in
and one out when nothing is lost) at `--cpu-at` calls and at the knee; the knee: the most calls
with a round-trip p99 above each call's fastest round trip (a call's playout clock settles at a
fixed delay of its own when it starts; the resamplers add ~75 ms at 16 kHz bridged) at most
`--p99-ms` more than the same target's at `--cpu-at` calls (the jitter the path has at low
load: about 0.7 ms for echo, 20 ms for a bridged call's 40 ms uplink events, 40 ms more through
the 16 kHz resamplers: the `p99 bound` column), with nothing lost and no errors, found by
bisection between `--low` and `--high` to `--resolution` calls, a fresh server (and model) per
step, the targets' steps alternating round by round (so that the machine's drift falls on all
of them alike); and the server's RSS growth per call.
The calls talk on, uncounted, for a moment after the window, so that what a bridge or its resamplers
hold back (a frame waiting for its 40 ms event, a filter's tail, a burst) comes back and is not
taken for lost. A `RESULT {json}` line per target goes to stderr. On a machine shared with other
work run it with priority (`nice -n -10 python bench/yardstick.py ...`) and say so. `--root TREE`
runs the gateway's targets from another checkout (an A/B; the yardstick and the fake model stay this
tree's). `--model-burst-ms N` has the fake model answer in bursts of N ms of audio, as a real model
streams a reply faster than real time: the gateway then paces each burst out frame by frame (knowing
what the caller heard), where the asyncio bridge sends it on as it comes; the round trip then
includes the wait for the burst, so read the CPU rather than the knee.
`--busy-core` keeps the server's core from idling (see `bench/echo_load.py`): at low load, what
each frame costs the machine to wake the core is then left out of the CPU per frame.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pybase64

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_load  # noqa: E402
import echo_model  # noqa: E402
from echo_load import RING, Call, Generator, proc_cpu_seconds, proc_rss_kb  # noqa: E402

from gateway.acs import client as wire  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
KEY_ENV = "BENCH_REALTIME_KEY"
STEP = 1000  # PCM level per sequence step
# Sequence k is sent as level ORDER[k]: neighbours differ by at most two steps, so a resampler's
# ringing at a frame boundary stays small next to the step.
ORDER = list(range(0, RING, 2)) + list(range(RING - 1, 0, -2))
SEQ_OF_LEVEL = {level: seq for seq, level in enumerate(ORDER)}
PROBE = 80  # bytes between the levels read back (every 40th sample, 2.5 ms at 16 kHz)


class LevelGenerator(Generator):
    """echo_load's generator sending constant-level frames: the level is the sequence number."""

    seen: dict[int, list[bool]]

    def __init__(self, url: str, calls: int, rate: int, flush_s: float = echo_load.FLUSH_S) -> None:
        super().__init__(url, calls, rate, flush_s=flush_s)
        self.seen = {}
        self.per_call: dict[int, list[float]] = {}

    def excess(self) -> list[float]:
        """Each round trip above its call's fastest: the queueing, without the fixed delay a
        call's playout clock settled at when it started (it differs from call to call)."""
        return sorted(t - min(ts) for ts in self.per_call.values() for t in ts)

    def excess_by_quarter(self) -> tuple[list[float], list[float]]:
        """Each call's median excess in each quarter of the window, in ms: the median call's
        and the worst call's, quarter by quarter. Rising: the server falls further behind.
        Level: a delay taken once (a stall) and held since."""
        calls = []
        for ts in self.per_call.values():
            fastest, n = min(ts), len(ts)
            if n >= 4:
                quarters = [ts[i * n // 4 : (i + 1) * n // 4] for i in range(4)]
                calls.append([(statistics.median(q) - fastest) * 1000 for q in quarters])
        if not calls:
            return [], []
        by_quarter = list(zip(*calls, strict=True))
        return [statistics.median(q) for q in by_quarter], [max(q) for q in by_quarter]

    def frames_for(self, index: int) -> list[bytes]:
        size = self.rate * 2 // 50
        frames = []
        for seq in range(RING):
            level = (ORDER[seq] - RING // 2) * STEP
            pcm = level.to_bytes(2, "little", signed=True) * (size // 2)
            text = wire.audio_text(pcm, None, silent=False)
            frames.append(echo_load.masked_text_frame(text))
        return frames

    def on_echo(self, call: Call, buf: bytearray, at: int, now: float) -> None:
        """Time the first return of each frame: a resampled path returns packets of any length,
        so every level in the packet counts (read every `PROBE` samples)."""
        end = buf.find(b'"', at)
        pcm = pybase64.b64decode(bytes(buf[at:end]))
        seen = self.seen.setdefault(call.index, [True] * RING)
        for offset in range(PROBE, len(pcm) - 1, PROBE * 2):
            level = int.from_bytes(pcm[offset : offset + 2], "little", signed=True)
            seq = SEQ_OF_LEVEL[min(RING - 1, max(0, round(level / STEP) + RING // 2))]
            if not seen[seq]:
                seen[seq] = True
                call.echoed += 1
                if call.counted[seq]:  # sent in the window: timed once
                    call.counted[seq] = 0
                    self.rtts.append(now - call.sent_at[seq])
                    self.per_call.setdefault(call.index, []).append(now - call.sent_at[seq])

    def sending(self, call: Call, slot: int) -> None:
        self.seen.setdefault(call.index, [True] * RING)[slot] = False


class Target:
    def __init__(self, name: str, rate: int, start: Callable[..., list[str]]):
        self.name, self.rate, self.start = name, rate, start


def gateway_cmd(processor: str, config: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--log-level", "info", "--max-calls", "100000", "--processor", processor]
    return cmd + (["--config", str(config)] if config else [])


def asyncio_bridge_cmd(url: str, rate: int) -> list[str]:
    return [sys.executable, str(BENCH / "asyncio_bridge.py"), "--model", url, "--rate", str(rate)]


def model_config(url: str, provider: str = "openai") -> Path:
    config = Path(tempfile.mkdtemp(prefix="yardstick-")) / "realtime.toml"
    config.write_text(
        f'[processors.realtime]\nendpoint = "{url}"\napi_key_env = "{KEY_ENV}"\n'
        f'provider = "{provider}"\n'
    )
    return config


TARGETS = {
    "echo": Target("echo", 16000, lambda url: gateway_cmd("echo")),
    "asyncio": Target(
        "asyncio", 16000, lambda url: [sys.executable, str(BENCH / "asyncio_echo.py")]
    ),
    "bridged16": Target("bridged16", 16000, lambda url: gateway_cmd("realtime", model_config(url))),
    "bridged24": Target("bridged24", 24000, lambda url: gateway_cmd("realtime", model_config(url))),
    "bridged16-voicelive": Target(  # not in the default run: Voice Live takes 16 kHz as it is
        "bridged16-voicelive",
        16000,
        lambda url: gateway_cmd("realtime", model_config(url, "voice-live")),
    ),
    "asyncio-bridged16": Target(
        "asyncio-bridged16", 16000, lambda url: asyncio_bridge_cmd(url, 16000)
    ),
    "asyncio-bridged24": Target(
        "asyncio-bridged24", 24000, lambda url: asyncio_bridge_cmd(url, 24000)
    ),
}


def stop(proc: subprocess.Popen[bytes], graceful: Callable[[], None]) -> None:
    graceful()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(
    target: Target, calls: int, args: argparse.Namespace, base_ms: float = 0.0
) -> dict[str, Any]:
    """One load against a fresh server (and model): the generator's figures plus CPU and RSS.
    `ok`: nothing lost, no errors, and the round trip's p99 above each call's fastest at most
    `base_ms` (the target's own at low load) plus `--p99-ms`."""
    model = None
    model_url = ""
    env = {KEY_ENV: "bench-key"}
    if "bridged" in target.name:
        ca_path = str(Path(tempfile.mkdtemp(prefix="yardstick-")) / "ca.pem")
        model, model_url = echo_model.start(
            args.client_cpu, ca_path if args.model_tls else None, args.model_burst_ms
        )
        if args.model_tls:  # the server trusts the fake model's CA as it would a real one
            env["SSL_CERT_FILE"] = ca_path
    try:
        # The gateway's targets from `--root` (an A/B against another checkout); the yardstick
        # and the fake model always from this tree.
        root = args.root if args.root and not target.name.startswith("asyncio") else ROOT
        proc, url = echo_load.start_process(target.start(model_url), args.server_cpu, root, env)
        try:
            # A model answering in bursts holds up to a burst of each call's last audio: the
            # calls talk on (uncounted) until it has sent the window's.
            held = args.model_burst_ms / 1000 if model is not None else 0.0
            gen = LevelGenerator(url, calls, target.rate, echo_load.FLUSH_S + held)
            rss_idle = proc_rss_kb(proc.pid)
            marks: dict[str, Any] = {}

            def begin() -> None:
                marks.update(cpu0=proc_cpu_seconds(proc.pid), rss=proc_rss_kb(proc.pid))
                if model is not None:
                    marks.update(model0=proc_cpu_seconds(model.pid))

            def end() -> None:
                marks.update(cpu1=proc_cpu_seconds(proc.pid))
                if model is not None:
                    marks.update(model1=proc_cpu_seconds(model.pid))

            gen.server_start, gen.server_stop = begin, end  # type: ignore[method-assign]  # the hooks
            result: dict[str, Any] = dict(gen.run(args.warmup, args.duration))
            excess = gen.excess()
            rtts = sorted(gen.rtts)
            floor = rtts[0] * 1000 if rtts else 0.0
            jitter = excess[min(len(excess) - 1, len(excess) * 99 // 100)] * 1000 if excess else 0.0
            median_call, worst_call = gen.excess_by_quarter()
            gen.close()
        finally:
            stop(proc, proc.terminate)
    finally:
        if model is not None:
            assert model.stdin is not None
            stop(model, model.stdin.close)
    window = result["window_s"]
    cpu = marks["cpu1"] - marks["cpu0"]
    result.pop("_echoed_all", None)
    result["rtt_min_ms"] = round(floor, 2)
    result["excess_p99_ms"] = round(jitter, 2)
    result["median_call_quarters_ms"] = [round(q, 1) for q in median_call]
    result["worst_call_quarters_ms"] = [round(q, 1) for q in worst_call]
    result["server_cpu_pct"] = round(100 * cpu / window, 1)
    # per inbound frame, as the gateway's own goals count it (echo: one in and one out)
    result["us_per_frame"] = round(cpu / max(1, result["frames_sent"]) * 1e6, 1)
    result["rss_per_call_kb"] = round((marks["rss"] - rss_idle) / calls, 1)
    if model is not None:
        result["model_cpu_pct"] = round(100 * (marks["model1"] - marks["model0"]) / window, 1)
    result["ok"] = bool(
        result["excess_p99_ms"] <= base_ms + args.p99_ms
        and result["frames_lost"] == 0
        and result["errors"] == 0
        and result["frames_echoed"] > 0
    )
    return result


def show(target: Target, r: dict[str, Any], judged: bool = True) -> None:
    """One step. `judged` False: the low-load step, which sets the target's p99 bound and is
    not itself passed or failed."""
    model = f", model {r['model_cpu_pct']}%" if "model_cpu_pct" in r else ""
    verdict = ("ok  " if r["ok"] else "FAIL") if judged else "base"
    print(
        f"  {target.name:>9} {r['calls']:>4} calls: {verdict} "
        f"p99 {r['excess_p99_ms']} ms over each call's fastest (all: p50 {r['rtt_p50_ms']}, "
        f"p99 {r['rtt_p99_ms']}), lost {r['frames_lost']}, "
        f"{r['us_per_frame']} us/frame, cpu {r['server_cpu_pct']}%, "
        f"{r['rss_per_call_kb']} KB/call, gen {r['client_cpu_pct']}%{model}",
        flush=True,
    )
    failed = judged and not r["ok"]
    if failed and r.get("worst_call_quarters_ms"):
        print(
            "    above each call's fastest, median by quarter of the window: median call "
            f"{r['median_call_quarters_ms']} ms, worst call {r['worst_call_quarters_ms']} ms"
        )
    if r["client_cpu_pct"] > 80 or r["ticker_late_p99_ms"] > 5 or r.get("model_cpu_pct", 0) > 80:
        print("    WARNING: the generator or the fake model may be the bottleneck here")
    if failed and r["server_cpu_pct"] < 70:
        print(
            f"    WARNING: the server failed at {r['server_cpu_pct']}% of its core: other work on"
            " the machine, not the server, limited this step"
        )


class Bisection:
    """One target's knee, found a step at a time (so that the targets' steps can alternate):
    the most calls that pass, between `low` (which must pass) and `high`, to `resolution`."""

    def __init__(self, low: int, high: int, resolution: int) -> None:
        self.low, self.bad, self.high, self.resolution = low, high, high, resolution
        self.runs: dict[int, dict[str, Any]] = {}
        self.knee: str | None = None  # when found: calls, or '<low' / '>=high' at the ends

    def next_calls(self) -> int | None:
        if self.knee is not None:
            return None
        if not self.runs:
            return self.low
        if self.bad - self.low > self.resolution:
            return (self.low + self.bad) // 2
        return self.high  # narrowed to the top: does the top itself pass?

    def record(self, calls: int, run: dict[str, Any]) -> None:
        ok = bool(run["ok"])
        first = not self.runs
        self.runs[calls] = run
        if first and not ok:
            self.knee = f"<{self.low}"
        elif calls == self.high:
            self.knee = f">={self.high}" if ok else str(self.low)
        elif not first:
            self.low, self.bad = (calls, self.bad) if ok else (self.low, calls)
        narrowed = self.bad - self.low <= self.resolution
        if self.knee is None and narrowed and self.bad != self.high:
            self.knee = str(self.low)

    @property
    def run(self) -> dict[str, Any] | None:
        """The step at the knee (None below `low`)."""
        if self.knee is None or self.knee.startswith("<"):
            return None
        return self.runs[self.high if self.knee.startswith(">=") else self.low]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default="echo,asyncio,bridged16,bridged24,asyncio-bridged16,asyncio-bridged24",
    )
    parser.add_argument("--low", type=int, default=50, help="bisection's lower bound (calls)")
    parser.add_argument("--high", type=int, default=900, help="bisection's upper bound (calls)")
    parser.add_argument("--resolution", type=int, default=25, help="stop within this many calls")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after ramp-up")
    parser.add_argument("--cpu-at", type=int, default=50, help="calls for the low-load CPU row")
    parser.add_argument("--p99-ms", type=float, default=20.0, help="the knee's p99 bound")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--root", type=Path, help="run the gateway's targets from this source tree (A/B)"
    )
    parser.add_argument(
        "--model-tls",
        action="store_true",
        help="the fake model serves wss://, as the real service does (the bridged targets)",
    )
    parser.add_argument(
        "--model-burst-ms",
        type=int,
        default=0,
        help="the fake model answers in bursts of this much audio, faster than real time",
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep the server's core from idling (echo_load.py's SCHED_IDLE spinner)",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    names = args.targets.split(",")
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {sorted(TARGETS)}")
    with echo_load.core_kept_busy(args.server_cpu if args.busy_core else None):
        rows = run_targets(names, args)
    report(rows, args)


def run_targets(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every target's low-load step, then the bisections' steps, round by round, alternating
    between the targets (the order reversed each round): what the machine does meanwhile
    falls on every target alike, not on the one measured at the time."""
    targets = [TARGETS[name] for name in names]
    low_runs: dict[str, dict[str, Any]] = {}
    for target in targets:
        low_runs[target.name] = measure(target, args.cpu_at, args)
        show(target, low_runs[target.name], judged=False)
    searches = {t.name: Bisection(args.low, args.high, args.resolution) for t in targets}
    order = list(targets)
    while any(search.knee is None for search in searches.values()):
        for target in order:
            calls = searches[target.name].next_calls()
            if calls is None:
                continue
            # What load adds to the round trip's jitter, not what the path has at any load: the
            # bridged paths carry the uplink's 40 ms events and (16 kHz) the resamplers' chunking.
            run = measure(target, calls, args, low_runs[target.name]["excess_p99_ms"])
            show(target, run)
            searches[target.name].record(calls, run)
        order.reverse()
    rows: list[dict[str, Any]] = []
    for target in targets:
        low_run, search = low_runs[target.name], searches[target.name]
        run = search.run
        row = {
            "target": target.name,
            "knee": search.knee,
            "p50_low_ms": low_run["rtt_p50_ms"],
            "us_low": low_run["us_per_frame"],
            "us_knee": run["us_per_frame"] if run else float("nan"),
            "kb_call": run["rss_per_call_kb"] if run else low_run["rss_per_call_kb"],
            "model_pct": (run or low_run).get("model_cpu_pct", float("nan")),
            "p99_bound_ms": round(low_run["excess_p99_ms"] + args.p99_ms, 2),
        }
        rows.append(row)
        print("RESULT " + json.dumps(row), file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    echo_us = {r["target"]: r["us_low"] for r in rows if r["target"] in ("echo", "asyncio")}
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} load {os.getloadavg()[0]:.1f}; "
        f"server on core {args.server_cpu}, generator and model on core {args.client_cpu}"
        + ("; server's core kept busy (--busy-core)" if args.busy_core else "")
    )
    print(
        f"{'target':>17} {'knee':>6} {'p50 ms':>8} {f'us/frame@{args.cpu_at}':>13} "
        f"{'us/frame@knee':>13} {'flat':>6} {'KB/call':>8} {'x echo':>7} {'model%':>7} "
        f"{'p99 bound':>9}"
    )
    for r in rows:
        flat = (
            f"{(r['us_knee'] / r['us_low'] - 1) * 100:+.0f}%"
            if r["us_knee"] == r["us_knee"]
            else ""
        )
        # against the same server's echo: the gateway's, or the asyncio yardstick's
        echo = echo_us.get("asyncio" if r["target"].startswith("asyncio") else "echo")
        ratio = f"{r['us_low'] / echo:.2f}" if echo else ""
        print(
            f"{r['target']:>17} {r['knee']:>6} {r['p50_low_ms']:>8} {r['us_low']:>13} "
            f"{r['us_knee']:>13} {flat:>6} "
            f"{r['kb_call']:>8} {ratio:>7} {r['model_pct']:>7} {r['p99_bound_ms']:>9}"
        )


if __name__ == "__main__":
    main()
