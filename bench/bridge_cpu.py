"""Realtime bridge benchmark: barge-in latency, and CPU per bridged call next to an echo call.

    python bench/bridge_cpu.py --calls 20
    python bench/bridge_cpu.py --calls 50 --stagger 0.04
    python bench/bridge_cpu.py --root /tmp/main-checkout   # the gateway of another tree
    python bench/bridge_cpu.py --latency-runs 0 --pairs 4 --yardstick  # beside asyncio servers
    python bench/bridge_cpu.py --latency-runs 0 --pairs 5 --turns 4    # longer calls

One run measures both processors, each against a fresh `python -m gateway serve` pinned to core
0 (`--server-cpu`); this process (the simulated ACS calls) and the fake model server from
`gateway.testing` (a process of its own) run on core 1. Every call plays the same 5.5 s
conversation in real time at 16 kHz (`--rate 24000`: 24 kHz, the model's own rate, whose audio
goes upstream undecoded): 2 s of speech, 1.5 s of silence while the model answers,
1 s of interruption, 1 s of silence. The fake model answers the first turn with 7.6 s of speech
streamed 4x faster than real time, so the caller interrupts it mid-answer.

`--turns N` makes each call that conversation N times over (the fake model answers every
interruption but the last with an empty response, so each conversation goes as the first did).
A call's setup and teardown cost the same however long it lasts, and more for a bridged call
(the model's connection, its handshake and session) than for an echo call: over a 5.5 s call
they are a visible part of the CPU per frame, over minutes they are not. Comparing `--turns 1`
with `--turns 4` separates the two; `--setup N` measures the first directly: after the pairs,
N calls of 0.2 s of silence (10 frames) per processor, three rounds alternated, and prints the
gateway's CPU per such call.

Prints, per processor: the gateway's CPU over the run (% of a core, per call, and microseconds
per 20 ms inbound frame), its RSS per call twice (the server's RSS less its RSS after one
warm-up call, which loads what a first call loads: numpy and soxr for the resampler): while
every caller speaks, and while every bot speaks, when the gateway also holds the bot's reply
that the fake model streams 4x faster than real time; the seconds of audio each call heard on
average in each conversation, by ACS's playback queue: what the server sent, less what
stop-audio dropped before it played (echo: its own; realtime: the bot's until the barge-in,
about 1.1 s: far less means the conversation went wrong and the run does not compare); and for
the realtime phase the barge-in latency: from the fake model sending
`input_audio_buffer.speech_started` to the simulated ACS receiving stop-audio (so it includes
two loopback hops and this process's own scheduling: an upper bound on the gateway's share), and
the gateway's own share: the upper bounds of the buckets of its
`acs_gateway_barge_in_stop_latency_seconds` that hold the p50 and the p99 (from the bridge
taking `speech_started` to stop-audio written, or taken by the send task). Calls start
`--stagger` seconds apart so connection k + 1 upstream is call k (the first connection is the
warm-up call's).

The `tools` row is the bridge again with one tool round trip per conversation: the fake model
answers the caller's turn with a function call (`lookup`, below, a plain function run in a
worker thread), the gateway runs it, returns its output and asks for the next response, which is
the same 7.6 s reply; the difference from the `realtime` row is what a tool call costs. That
difference is within this benchmark's noise, so the gateway's own work per tool call (the event
parsed, the arguments checked and converted, the tool run, its output and the request to go on
written) is also timed in this process, for `lookup` as it is (a worker thread) and as an async
function: `--tool-calls` of each.

`--pairs N` runs N - 1 more echo and realtime phases, alternated, after the rows above and
prints the bridged / echo ratio of each pair and their median, and each side's µs per frame
by pair and their median (for A/B runs of one processor with `--root`): at 20 calls one
pair's ratio moves by 0.2-0.3x from run to run on this kind of machine, so judge the goal by
the median.

This process and the fake model's run with garbage collection off during a phase: they keep
every message and event of it, and a full collection would stall the clock at one end of each
barge-in's latency.

`--busy-core` keeps the gateway's core from idling (`bench/echo_load.py`'s `SCHED_IDLE`
spinner), which leaves the machine's cost of waking an idle core out of both processors' CPU.

`--uplink-batch-ms N` sets the realtime option of that name: how much of the caller's audio
goes to the model per event (CPU against the delay before the model hears the end of a turn).

`--yardstick` adds two servers to every pair, alternated with the gateway's phases: the
minimal asyncio + `websockets` echo of `bench/asyncio_echo.py`, and `bench/asyncio_bridge.py`,
a minimal asyncio bridge to the same fake model in the shape of Microsoft's samples (the
caller's audio in events of the gateway's batch, each model delta straight to ACS unpaced,
stop-audio and `response.cancel` on `speech_started`). It prints their µs per frame and two
more ratios: the asyncio bridge over the asyncio echo (what bridging costs a server that does
nothing else), and this gateway's bridged call over the asyncio bridge's.

`--mix` adds two realtime phases on unmixed streams with two participants (the conversation
and a faint second voice, sent together each 20 ms):
`speakers = "first"` (the model hears one) and `speakers = "mix"` (the model hears their
time-aligned sum); their difference is the mixer's cost.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from echo_load import (  # noqa: E402
    core_kept_busy,
    free_port,
    histogram_bound_ms,
    lateness_p99_ms,
    model_tls,
    proc_cpu_seconds,
    proc_rss_kb,
    start_process,
    start_server,
)

from gateway.testing import (  # noqa: E402
    FunctionCall,
    open_fake_model,
    simulated_call,
    speech,
)

RATE = 16000  # the calls' sample rate (--rate)
PROVIDER = "openai"  # the gateway's realtime provider (--provider)
TURNS = 1  # --turns: the conversation, this many times per call
SETUP_ROUNDS = 3  # --setup: alternated rounds of short calls, echo then realtime
UPLINK_BATCH_MS: int | None = None  # --uplink-batch-ms: the asyncio bridge's too
BENCH_DIR = str(Path(__file__).resolve().parent)  # where the gateway finds `lookup`
KEY_ENV = "BENCH_REALTIME_KEY"
LOG = logging.getLogger("bench.tools")


def lookup(order_id: str) -> dict[str, str]:
    """The benchmark's tool (the gateway imports it from this file: `--app-dir bench`)."""
    return {"order_id": order_id, "status": "shipped"}


async def lookup_async(order_id: str) -> dict[str, str]:
    return lookup(order_id)


async def tool_call_us(path: str, n: int) -> float:
    """CPU microseconds of the gateway's work per tool call, in this process (no sockets)."""
    import orjson

    from gateway.processors import Call, CallStats
    from gateway.processors.realtime import protocol
    from gateway.processors.realtime.tool_calls import ToolCalls, ToolSession
    from gateway.processors.realtime.tools import Toolbox

    _, packets = trio.open_memory_channel[object](0)
    log = logging.LoggerAdapter(LOG)
    stats = CallStats()
    call = Call(None, None, "/", {}, None, None, packets, None, log, stats)  # type: ignore[arg-type]  # never read
    calls = ToolCalls(call, Toolbox.from_options([path], [], {}, 10_000))
    answered = trio.Event()

    async def send(events: list[str]) -> bool:
        if events[-1] == protocol.create_response():
            answered.set()
        return True

    session = ToolSession(send, lambda: False)
    name = path.partition(":")[2]
    started = time.process_time()
    async with trio.open_nursery() as nursery:
        for k in range(n):
            answered = trio.Event()
            message = orjson.dumps(
                {
                    "type": "response.function_call_arguments.done",
                    "response_id": f"r{k}",
                    "item_id": f"i{k}",
                    "call_id": f"c{k}",
                    "name": name,
                    "arguments": '{"order_id":"A17"}',
                }
            )
            event = protocol.parse(message)
            assert isinstance(event, protocol.ToolCall)
            calls.start(nursery, session, event)
            await calls.response_done(session, f"r{k}", "completed")
            await answered.wait()
    assert call.stats.tool_calls == {"ok": n}, call.stats.tool_calls
    return (time.process_time() - started) / n * 1e6


def conversation() -> bytes:
    silence = lambda s: bytes(int(RATE * s) * 2)  # noqa: E731
    if RATE == 16000:
        interrupt = speech(RATE, "interrupt")[: RATE * 2]
    else:  # the bundled interruption is 16 kHz only: another second of the speech clip
        interrupt = speech(RATE)[RATE * 2 * 5 : RATE * 2 * 6]
    return speech(RATE)[: RATE * 2 * 2] + silence(1.5) + interrupt + silence(1.0)


def second_voice(audio: bytes) -> bytes:
    """Another participant: the same speech a second later, faint (1/32 of the level: under
    the fake model's VAD threshold, so both phases hold the same conversation)."""
    import numpy as np

    pcm = np.frombuffer(bytes(RATE * 2) + audio[: -RATE * 2], dtype=np.int16) // 32
    return pcm.astype(np.int16).tobytes()


async def run_calls(
    url: str,
    n: int,
    stagger: float,
    audio: bytes | dict[str | None, bytes],
    echo_lag: list[float] | None = None,
    heard: list[int] | None = None,
) -> list[tuple[float, list]]:
    """Run n calls; returns (start time, stop-audio times) per call, in start order. `heard`
    gets the bytes of audio each call received."""
    results: list[tuple[float, list]] = [(0.0, [])] * n

    async def one(i: int) -> None:
        await trio.sleep(i * stagger)
        async with simulated_call(url, sample_rate=RATE, connection_id=f"bench-{i}") as call:
            to_perf = time.perf_counter() - trio.current_time()
            started = trio.current_time() + to_perf
            await call.stream(audio)
            streamed = trio.current_time()
            await trio.sleep(0.2)
            if echo_lag is not None and call.received:
                echo_lag.append(call.received[-1].time - streamed)
            if heard is not None:
                heard.append(len(call.playback.heard()))
            results[i] = (started, [t + to_perf for t in call.stop_times])

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


YARDSTICKS = ("asyncio echo", "asyncio bridge")


def yardstick_cmd(kind: str, model_url: str) -> list[str]:
    """The command of a yardstick server: `bench/asyncio_echo.py` or `bench/asyncio_bridge.py`."""
    if kind == "asyncio echo":
        return [sys.executable, str(Path(BENCH_DIR) / "asyncio_echo.py")]
    script = str(Path(BENCH_DIR) / "asyncio_bridge.py")
    batch = ["--append-ms", str(UPLINK_BATCH_MS)] if UPLINK_BATCH_MS else []
    return [sys.executable, script, "--model", model_url, "--rate", str(RATE), *batch]


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


@asynccontextmanager
async def fake_model_process(
    cpu: int, tools: bool = False, tls: bool = False
) -> AsyncIterator[tuple[str, list[dict[str, float]]]]:
    """The fake model in a process of its own (so it is not starved by the simulated calls);
    yields its URL and, after the block, its speech_started events on the perf_counter clock.
    `tls`: it serves wss:// from a throwaway CA, which servers started meanwhile trust
    (`SSL_CERT_FILE`, as they would a real CA)."""
    cmd = [sys.executable, __file__, "--serve-model", "--turns", str(TURNS)]
    cmd += ["--rate", str(RATE), "--provider", PROVIDER]
    cmd += ["--tools"] if tools else []
    if tls:
        ca_path = str(Path(tempfile.mkdtemp(prefix="bridge-cpu-")) / "ca.pem")
        cmd += ["--tls-ca", ca_path]
        os.environ["SSL_CERT_FILE"] = ca_path
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = _spawn(cmd)
    assert proc.stdout is not None and proc.stdin is not None
    url = (await trio.to_thread.run_sync(proc.stdout.readline)).decode().strip()
    starts: list[dict[str, float]] = []
    fake_model_process.pid = proc.pid  # type: ignore[attr-defined]
    try:
        yield url, starts
    finally:
        proc.stdin.close()  # tells it to report and exit
        report = await trio.to_thread.run_sync(proc.stdout.read)
        proc.wait()
        starts += json.loads(report or b"[]")


async def serve_model(tools: bool, tls_ca: str | None) -> None:
    # the reply at the rate the session will ask for: Voice Live's is the call's own
    conversation: list[bytes | FunctionCall] = [speech(RATE if PROVIDER == "voice-live" else 24000)]
    if tools:  # the turn is a tool call; the reply comes after its output
        conversation.insert(0, FunctionCall("lookup", {"order_id": "A17"}))
    # the interruption's turn: an empty response, but after the last conversation no response
    script = (conversation + [b""]) * (TURNS - 1) + conversation
    context = model_tls(tls_ca) if tls_ca else None
    # It records every event of every session, and lives for one phase: collecting all that
    # would stall it, and the speech_started times it reports with it.
    gc.disable()
    async with open_fake_model(script, speed=4.0, ssl_context=context) as model:
        print(model.url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes stdin
        offset = trio.current_time() - time.perf_counter()
        starts = [
            {"connection": r.connection, "time": r.time - offset}
            for r in model.sent_of("input_audio_buffer.speech_started")
        ]
        print(json.dumps(starts), flush=True)


async def phase(
    args: argparse.Namespace,
    kind: str,
    one_at_a_time: bool = False,
    speakers: str | None = None,
    calls: int | None = None,
    voice: bytes | None = None,
) -> dict[str, float]:
    if voice is None:
        voice = conversation() * args.turns
    audio: bytes | dict[str | None, bytes] = voice
    if speakers is not None:
        audio = {"8:acs:caller": voice, "8:acs:other": second_voice(voice)}
    tools = kind == "tools"
    bridged = kind not in ("echo", "asyncio echo")
    async with fake_model_process(args.model_cpu, tools, args.model_tls) as (model_url, starts):
        extra = ["--processor", "echo" if kind == "echo" else "realtime"]
        if bridged and not kind.startswith("asyncio"):
            config = Path(tempfile.mkdtemp()) / "bench.toml"
            config.write_text(
                f'[processors.realtime]\nendpoint = "{model_url}"\napi_key_env = "{KEY_ENV}"\n'
                + f'provider = "{PROVIDER}"\n'
                + ('tools = ["bridge_cpu:lookup"]\n' if tools else "")
                + (f'speakers = "{speakers}"\n' if speakers else "")
                + (f"uplink_batch_ms = {args.uplink_batch_ms}\n" if args.uplink_batch_ms else "")
            )
            extra += ["--config", str(config)]
            if tools:
                extra += ["--app-dir", BENCH_DIR]
        cpu = None if args.server_cpu < 0 else args.server_cpu
        health = free_port()  # the gateway's /metrics: its pacing lateness
        os.environ.update(ACS_GATEWAY_HEALTH_PORT=str(health), ACS_GATEWAY_HEALTH_HOST="127.0.0.1")
        if kind.startswith("asyncio"):
            proc, url = start_process(yardstick_cmd(kind, model_url), cpu)
        else:
            proc, url = start_server(cpu, extra, *([args.root] if args.root else []))
        try:
            await trio.sleep(0.5)
            await run_calls(url, 1, 0, voice[: RATE * 2])  # warm-up: first-call imports
            await trio.sleep(0.3)
            rss0 = proc_rss_kb(proc.pid)
            rss_live: list[int] = []

            async def sample_rss() -> None:
                # every call up and its caller speaking (1.0-2.0 s into the conversation), then
                # every bot speaking (2.6-3.6 s), its reply queued in the gateway
                await trio.sleep(args.calls * args.stagger + 1.0)
                rss_live.append(proc_rss_kb(proc.pid))
                await trio.sleep(1.6)
                rss_live.append(proc_rss_kb(proc.pid))

            cpu0, wall0 = proc_cpu_seconds(proc.pid), time.monotonic()
            own0 = time.process_time()
            model_pid = fake_model_process.pid  # type: ignore[attr-defined]
            model0 = proc_cpu_seconds(model_pid)
            lag: list[float] = []
            heard: list[int] = []
            # The simulated calls keep every message they exchange; a full collection of all
            # that stalls this process, and with it the barge-in latency it measures.
            gc.disable()
            try:
                if one_at_a_time:  # a fresh model connection per call: connection k is call k
                    results = []
                    for _ in range(args.latency_runs):
                        results += await run_calls(url, 1, 0, audio)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sample_rss)
                        results = await run_calls(
                            url,
                            calls or args.calls,
                            args.stagger,
                            audio,
                            lag if not bridged else None,
                            heard,
                        )
            finally:
                gc.enable()
            cpu1, wall1 = proc_cpu_seconds(proc.pid), time.monotonic()
            own1 = time.process_time()
            model1 = proc_cpu_seconds(model_pid)
            late_p99, paced, stop_p50, stop_p99 = (float("nan"),) * 4
            if not kind.startswith("asyncio"):  # the yardsticks have no /metrics
                late_p99, paced = await trio.to_thread.run_sync(lateness_p99_ms, health)
                stop_p50, stop_p99 = [
                    (
                        await trio.to_thread.run_sync(
                            histogram_bound_ms, health, "barge_in_stop_latency_seconds", q
                        )
                    )[0]
                    for q in (0.5, 0.99)
                ]
        finally:
            proc.terminate()
            proc.wait()
    cpu = cpu1 - cpu0
    calls = len(results)
    frames = calls * len(voice) / (RATE * 2 // 50)  # per 20 ms of the call, all speakers
    row: dict[str, float] = {
        "calls": calls,
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / (wall1 - wall0),
        "cpu_pct_per_call": 100 * cpu / (len(voice) / (RATE * 2)) / calls,
        "us_per_frame": cpu / frames * 1e6,
        "gen_cpu_pct": 100 * (own1 - own0) / (wall1 - wall0),
        "model_cpu_pct": 100 * (model1 - model0) / (wall1 - wall0),
        "rss_kb_per_call": (rss_live[0] - rss0) / calls if rss_live else float("nan"),
        "rss_kb_per_call_bot": (rss_live[1] - rss0) / calls if rss_live[1:] else float("nan"),
        # audio the calls heard (echo: their own; realtime: the bot's, until the barge-in)
        "heard_s": sum(heard) / len(heard) / (RATE * 2) / args.turns if heard else float("nan"),
        # releases that waited for a playout deadline, and how late the p99 of them ran (the
        # upper bound of its histogram bucket); the warm-up call's included
        "late_p99_ms": late_p99,
        "paced": paced,
    }
    if lag:  # last frame sent -> its echo received: how far the whole loop lags real time
        row["echo_lag_max_ms"] = max(lag) * 1000
    if bridged and speakers is None:
        latencies = []
        for k, (_, stops) in enumerate(results):
            # model connection 1 was the warm-up call's
            mine = sorted(s["time"] for s in starts if s["connection"] == k + 2)
            if args.verbose:
                print(
                    k,
                    "speech_started",
                    [round(t - results[k][0], 3) for t in mine],
                    "stop-audio",
                    [round(t - results[k][0], 3) for t in stops],
                )
            # the barge-in's stop-audio (the asyncio bridge also sends one when the caller's
            # first turn starts, with nothing playing)
            barge_in = [t for t in stops if len(mine) >= 2 and t >= mine[1]]
            if barge_in:
                latencies.append((barge_in[0] - mine[1]) * 1000)
        row.update(
            own_p50_ms=stop_p50,
            own_p99_ms=stop_p99,
            barge_ins=len(latencies),
            lat_p50_ms=percentile(latencies, 50),
            lat_p99_ms=percentile(latencies, 99),
            lat_max_ms=max(latencies, default=float("nan")),
        )
    return row


async def main(args: argparse.Namespace) -> None:
    os.environ[KEY_ENV] = "bench-key"
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    pair = ("echo", "realtime", *(YARDSTICKS if args.yardstick else ()))
    with core_kept_busy(args.server_cpu if args.busy_core else None):
        rows = {kind: await phase(args, kind) for kind in (*pair, "tools")}
        if args.mix:
            for policy in ("first", "mix"):
                rows[f"2 speakers, {policy}"] = await phase(args, "realtime", speakers=policy)
        if args.latency_runs:
            rows["realtime, 1 call at a time"] = await phase(args, "realtime", one_at_a_time=True)
        per_frame = [[rows[kind]["us_per_frame"] for kind in pair]]
        for _ in range(args.pairs - 1):  # more pairs (or fours), alternated
            per_frame.append([(await phase(args, kind))["us_per_frame"] for kind in pair])
        setup: dict[str, list[float]] = {"echo": [], "realtime": []}
        for _ in range(SETUP_ROUNDS if args.setup else 0):  # calls of 0.2 s of silence
            for kind, ms in setup.items():
                row = await phase(args, kind, calls=args.setup, voice=bytes(RATE * 2 // 5))
                ms.append(row["cpu_s"] / row["calls"] * 1000)
    ratios = [us[1] / us[0] for us in per_frame]
    print(
        f"{'processor':>14} {'calls':>5} {'srv cpu%':>8} {'%/call':>7} {'us/frame':>8} "
        f"{'gen cpu%':>8} {'model%':>6} {'KB/call':>7} {'KB, bot':>7} {'heard s':>7} "
        f"{'paced':>6} {'late p99':>8}  barge-in"
    )
    for kind, row in rows.items():
        if kind not in ("echo", "realtime", "tools", *YARDSTICKS):
            print(f"{kind}:")
        latency = ""
        if "echo_lag_max_ms" in row:
            latency = f"(echo of the last frame after at most {row['echo_lag_max_ms']:.0f} ms)"
        if "barge_ins" in row:
            latency = (
                f"{row['barge_ins']:.0f} stops, speech_started -> stop-audio p50 "
                f"{row['lat_p50_ms']:.1f} / p99 {row['lat_p99_ms']:.1f} / max "
                f"{row['lat_max_ms']:.1f} ms"
            )
            if row["own_p50_ms"] == row["own_p50_ms"]:  # not NaN: the gateway's /metrics
                latency += (
                    f"; the gateway's own p50 <= {row['own_p50_ms']:g} / "
                    f"p99 <= {row['own_p99_ms']:g} ms"
                )
        print(
            f"{kind[:14]:>14} {row['calls']:>5.0f} {row['cpu_pct']:>8.1f} "
            f"{row['cpu_pct_per_call']:>7.2f} {row['us_per_frame']:>8.0f} "
            f"{row['gen_cpu_pct']:>8.0f} {row['model_cpu_pct']:>6.0f} "
            f"{row['rss_kb_per_call']:>7.0f} {row['rss_kb_per_call_bot']:>7.0f} "
            f"{row['heard_s']:>7.2f} {row['paced']:>6.0f} {row['late_p99_ms']:>8.1f}  {latency}"
        )
    if args.tool_calls:
        threaded = await tool_call_us("bridge_cpu:lookup", args.tool_calls)
        direct = await tool_call_us("bridge_cpu:lookup_async", args.tool_calls)
        print(
            f"the gateway's work per tool call ({args.tool_calls} calls, in this process): "
            f"{threaded:.0f} us for a plain function (a worker thread), {direct:.0f} us async"
        )
    if len(ratios) == 1:
        print(f"a bridged call costs {ratios[0]:.1f}x an echo call")
    else:
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"a bridged call costs {statistics.median(ratios):.2f}x an echo call "
            f"(median of {len(ratios)} pairs: {each})"
        )
        for side, name in enumerate(("echo", "bridged", *YARDSTICKS[: len(pair) - 2])):
            us = [each[side] for each in per_frame]
            listed = ", ".join(f"{u:.0f}" for u in us)
            print(f"{name} us per frame: median {statistics.median(us):.0f} ({listed})")
    if args.setup:
        print(
            f"a call of 0.2 s of silence ({args.setup} calls, {args.stagger * 1000:.0f} ms apart):"
        )
        for kind, ms in setup.items():
            each = ", ".join(f"{m:.2f}" for m in ms)
            print(f"  {kind}: median {statistics.median(ms):.2f} ms of CPU per call ({each})")
    if args.yardstick:
        theirs = [us[3] / us[2] for us in per_frame]
        against = [us[1] / us[3] for us in per_frame]
        print(
            f"the asyncio bridge costs {statistics.median(theirs):.2f}x the asyncio echo "
            f"({', '.join(f'{r:.2f}' for r in theirs)}); this gateway's bridged call costs "
            f"{statistics.median(against):.2f}x the asyncio bridge's "
            f"({', '.join(f'{r:.2f}' for r in against)})"
        )
    extra_ms = (rows["tools"]["cpu_s"] - rows["realtime"]["cpu_s"]) / rows["tools"]["calls"] * 1000
    extra_ms /= args.turns  # one round trip per conversation
    print(f"a tool round trip adds {extra_ms:.1f} ms of gateway CPU (noisy: compare rows)")
    if args.mix:
        first, mix = rows["2 speakers, first"], rows["2 speakers, mix"]
        extra_us = mix["us_per_frame"] - first["us_per_frame"]
        print(f"mixing two speakers costs {extra_us:+.0f} us per 20 ms of call over 'first'")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between call starts")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--latency-runs", type=int, default=5, help="then this many barge-ins, one call at a time"
    )
    parser.add_argument(
        "--turns", type=int, default=1, help="the conversation this many times in each call"
    )
    parser.add_argument(
        "--setup",
        type=int,
        default=0,
        help="then this many calls of 0.2 s of silence per processor, three rounds: CPU per call",
    )
    parser.add_argument("--mix", action="store_true", help="also measure speakers = mix")
    parser.add_argument(
        "--pairs", type=int, default=1, help="echo, realtime pairs for the ratio (median)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="-1: do not pin")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument("--model-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument(
        "--root", type=Path, help="run the gateway from this source tree (A/B against a checkout)"
    )
    parser.add_argument(
        "--tool-calls", type=int, default=2000, help="tool calls timed in-process (0: none)"
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep the server's core from idling (echo_load.py's SCHED_IDLE spinner)",
    )
    parser.add_argument(
        "--uplink-batch-ms",
        type=int,
        help="the realtime option uplink_batch_ms (default: the gateway's, 40)",
    )
    parser.add_argument(
        "--yardstick",
        action="store_true",
        help="also measure bench/asyncio_echo.py and bench/asyncio_bridge.py, alternated",
    )
    parser.add_argument(
        "--model-tls",
        action="store_true",
        help="the fake model serves wss://, as the real service does",
    )
    parser.add_argument(
        "--provider",
        default="openai",
        choices=("openai", "voice-live"),
        help="the realtime provider the gateway is configured for (voice-live: 16 kHz calls "
        "are not resampled)",
    )
    parser.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tls-ca", help=argparse.SUPPRESS)
    parser.add_argument("--tools", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    RATE = parsed.rate
    PROVIDER = parsed.provider
    TURNS = parsed.turns
    UPLINK_BATCH_MS = parsed.uplink_batch_ms
    if parsed.serve_model:
        trio.run(serve_model, parsed.tools, parsed.tls_ca)
    else:
        trio.run(main, parsed)
