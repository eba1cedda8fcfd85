"""Soak: calls start and end continuously for a set duration, beside every hostile kind of
connection at once; is memory flat, does nothing leak, is every honest call byte-exact?

    python bench/soak.py --concurrency 30 --duration 1800 --warmup 120 --sample-every 30 --hostile

The gateway (echo, its garbage collector set up as `serve` sets it: `gateway.ops.collector`)
runs in this process, so the sampler sees its live Trio tasks as well as its RSS and open file
descriptors. The load runs in a child process (`--load URL`): `--concurrency` workers, each
placing one call after another through the simulated ACS peer: real-time 20 ms frames of its own
random audio for a random `--call-seconds` (a range), checking the echo is byte-exact, then
hanging up (a few end with a TCP reset instead). The load stops by itself after `--duration`
seconds.

With `--hostile` the gateway checks ACS tokens (a local key-set server; honest calls carry a
valid token) and serves its health endpoint, and a second child process (`--attack`) attacks
both ports from another loopback address (127.0.0.2, so the per-source bounds apply to it and
not to the honest calls) for the same duration: idle TCP connections to the media port,
slowloris upgrades (a byte a second), oversized request heads (40 KB in one write), upgrades
with bad tokens, bursts of connections beyond the pending-handshake bounds, idle connections and
keep-alive request spam on the health port, and a call that floods frames as fast as it can.
Each sample also times a well-behaved `/readyz` probe (a fresh connection, 1 s to answer).

`--bridged`: the gateway runs the realtime processor instead (OpenAI's dialect: 24 kHz to the
model) against `bench/echo_model.py` in a process of its own, which sends each appended chunk
straight back as the model's audio, so every call opens, uses and closes a model session. Each
call talks at 24 kHz (passed through: its echo must be byte-exact) or 16 kHz (resampled both
ways: its echo must be all but the resamplers' last `RESAMPLED_HELD_MS`, time-aligned with what
was said, correlation at least `RESAMPLED_MIN_CORRELATION`), chosen at random. The verdict adds
the model's count of sessions still open once the calls have ended (goal: none).

`--model-faults` (with `--bridged`) soaks the bridge's failure paths instead: the model's
sessions expire `MODEL_SESSION_S` after they open (the gateway, told so, opens the next one
halfway and takes it over at the expiry at the latest) and each append drops its session's
connection with probability `--drop-share` (the gateway reconnects after a back-off, the
caller's audio in between dropped and counted). A call then need not hear all it said: it
waits `FAULTS_WAIT_S` for it, and is counted exact, short (it heard less than it said, and
not all of it lined up: audio was lost) or mismatched (it heard as much as it said, but not
what it said); the verdict is about leaks, failed calls and sessions left open.

Prints a sample table every `--sample-every` seconds (elapsed, RSS, fds, tasks, live calls,
calls accepted and failed, inbound frames dropped, connections refused at accept, the probe,
the objects the garbage collector has frozen) and a verdict: RSS growth from the end of the
warm-up to the end of the load (the goal is within 5%), and fds and tasks once the last call has
ended against the idle baseline taken before the first call. The frozen objects once the last
call has ended are printed beside their baseline: what a freeze caught of live calls goes with
them, so an excess that grows with the run's length is cycles kept frozen
(`gateway.ops.collector`). Also a `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_model  # noqa: E402

from gateway.acs.packets import frame_bytes  # noqa: E402
from gateway.config import Config  # noqa: E402
from gateway.ops import collector  # noqa: E402
from gateway.ops.health import serve_health  # noqa: E402
from gateway.processors import load as load_processor  # noqa: E402
from gateway.server.serve import Server, raise_descriptor_limit, serve  # noqa: E402
from gateway.testing import (  # noqa: E402
    AcsTokenIssuer,
    KeySetServer,
    serve_key_set,
    simulated_call,
)
from gateway.testing.census import open_fds, rss_kb, task_count  # noqa: E402

SETTLE_TIMEOUT = 30.0  # seconds for the last calls to end after the load stops
RESET_SHARE = 0.05  # calls that end with a TCP reset instead of a close handshake
RESOURCE_ID = "soak-acs-resource"
ATTACKER = "127.0.0.2"  # the hostile process's source address (loopback is all of 127/8)
PROBE_TIMEOUT = 1.0  # seconds a well-behaved probe may take
# A 16 kHz bridged call's echo: what the two resamplers may still hold when the caller stops
# (each holds back up to ~37 ms; the model's answer never ends, so the last is never flushed),
# and how alike it must be to what was said (the 24 -> 16 kHz filter takes off the top of
# the band: random noise keeps a correlation of about 0.97).
RESAMPLED_HELD_MS = 200
RESAMPLED_MIN_CORRELATION = 0.9
MODEL_SESSION_S = 4.0  # `--model-faults`: a session's life, so most calls roll over
FAULTS_WAIT_S = 3.0  # `--model-faults`: how long a call waits for the rest of its echo
RECONNECT_PAUSE = 0.2  # seconds an attacking task waits before its next connection


# -- the load (child process) --


async def place_calls(
    url: str,
    concurrency: int,
    duration: float,
    lengths: tuple[float, float],
    seed: int,
    token: str | None = None,
    bridged: bool = False,
    faults: bool = False,
) -> dict[str, int]:
    headers = [("Authorization", f"Bearer {token}")] if token else []
    counts = {"calls": 0, "exact": 0, "mismatched": 0, "short": 0, "errors": 0, "resets": 0}
    deadline = trio.current_time() + duration

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        # stagger the start so calls do not all begin and end together
        await trio.sleep(rng.uniform(0, lengths[0]))
        while trio.current_time() < deadline:
            seconds = rng.uniform(*lengths)
            rate = rng.choice((16000, 24000)) if bridged else 16000
            # a bridge sends the caller's audio up two frames an event: an even count of them
            frames = int(seconds * 25) * 2
            pcm = rng.randbytes(frames * frame_bytes(rate))
            # through a resampler: all but what it holds back, and not byte for byte
            resampled = bridged and rate == 16000
            expected = len(pcm) - (RESAMPLED_HELD_MS * rate * 2 // 1000 if resampled else 0)
            reset = rng.random() < RESET_SHARE
            counts["calls"] += 1
            try:
                async with simulated_call(
                    url, connection_id=f"soak-{index}", headers=headers, sample_rate=rate
                ) as call:
                    await call.stream(pcm)
                    if faults:
                        with trio.move_on_after(FAULTS_WAIT_S):
                            await call.wait_for_audio(expected)
                    else:
                        with trio.fail_after(10):
                            await call.wait_for_audio(expected)
                    heard = call.received_pcm
                    if resampled:
                        verdict = "exact" if alike(heard, pcm) else "mismatched"
                    else:
                        verdict = "exact" if heard == pcm else "mismatched"
                    if faults and verdict == "mismatched" and len(heard) < len(pcm):
                        # Audio lost to a fault; the rest no longer lines up with what was
                        # said (a resampled call's echo is always a little shorter).
                        verdict = "short"
                    counts[verdict] += 1
                    if verdict == "mismatched":
                        print(
                            f"call mismatched: {rate} Hz, said {len(pcm)} bytes, heard "
                            f"{len(heard)}, expected at least {expected}",
                            file=sys.stderr,
                        )
                    if reset:
                        counts["resets"] += 1
                        _reset(call.ws.stream)
            except Exception as exc:  # noqa: BLE001  (counted and shown; the soak goes on)
                if not reset:
                    counts["errors"] += 1
                    print(f"call error: {exc!r}", file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, index)
    return counts


def alike(heard: bytes, said: bytes) -> bool:
    """The echo is what was said, in time (the resampler keeps it aligned to the sample),
    bar the top of the band and what was still held back."""
    import numpy as np

    n = min(len(heard), len(said)) // 2
    a = np.frombuffer(heard, dtype=np.int16, count=n).astype(np.float64)
    b = np.frombuffer(said, dtype=np.int16, count=n).astype(np.float64)
    return bool(np.corrcoef(a, b)[0, 1] >= RESAMPLED_MIN_CORRELATION)


def _reset(stream: Any) -> None:
    """Abort the TCP connection (RST): SO_LINGER with a zero timeout, then close."""
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


# -- the attack (another child process) --


async def attack(
    media_port: int, health_port: int, duration: float, token: str | None
) -> dict[str, int]:
    """Every hostile kind at once, from ATTACKER, until `duration` ends; counts what happened."""
    counts: dict[str, int] = {}
    deadline = trio.current_time() + duration

    def note(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    async def connect(port: int) -> trio.socket.SocketType:
        sock = trio.socket.socket()
        try:
            await sock.bind((ATTACKER, 0))
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def held(kind: str, port: int, send: bytes = b"", drip: bytes = b"") -> None:
        """One connection: send `send`, then `drip` a byte a second, until the server closes it."""
        with await connect(port) as sock:
            note(kind)
            if send:
                await sock.send(send)
            for byte in drip:
                with trio.move_on_after(1.0):
                    if not await sock.recv(4096):
                        break
                await sock.send(bytes([byte]))
            while await sock.recv(4096):
                pass

    async def forever(kind: str, make: Any, pause: float = 0.0) -> None:
        while trio.current_time() < deadline:
            try:
                await make()
            except OSError:
                note(kind + "_reset")
            except Exception as exc:  # noqa: BLE001  (counted; the attack goes on)
                note(f"{kind}_{type(exc).__name__}")
            # a steady pressure, not a busy loop on a shared machine
            await trio.sleep(max(pause, RECONNECT_PAUSE))

    upgrade = (
        b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )

    async def idle_media() -> None:
        await held("idle_media", media_port)

    async def slowloris() -> None:
        await held("slowloris", media_port, upgrade, b"X-Slow: " + b"a" * 60)

    async def oversized() -> None:
        await held("oversized", media_port, upgrade + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n")

    async def bad_token() -> None:
        auth = b"Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiIxIn0.c2ln\r\n\r\n"
        await held("bad_token", media_port, upgrade + auth)

    async def burst() -> None:
        """More connections at once than the per-source pending bound lets through."""
        socks = []
        try:
            for _ in range(150):
                socks.append(await connect(media_port))
                note("burst")
            await trio.sleep(1.0)
        finally:
            for sock in socks:
                sock.close()

    async def idle_health() -> None:
        await held("idle_health", health_port)

    async def keep_alive_spam() -> None:
        with await connect(health_port) as sock:
            note("health_keepalive")
            while trio.current_time() < deadline:
                await sock.send(b"GET /livez HTTP/1.1\r\nHost: gw\r\n\r\n")
                if not await sock.recv(4096):
                    return
                await trio.sleep(5.0)

    async def frame_flood() -> None:
        url = f"ws://127.0.0.1:{media_port}"
        headers = [("Authorization", f"Bearer {token}")] if token else []
        async with simulated_call(url, connection_id="flood", headers=headers) as call:
            note("flood_call")
            await call.stream(bytes(640) * 1500, realtime=False)  # 30 s of audio at once

    kinds = [
        ("idle_media", idle_media, 200, 0.0),
        ("slowloris", slowloris, 50, 0.0),
        ("oversized", oversized, 2, 0.5),
        ("bad_token", bad_token, 2, 0.5),
        ("burst", burst, 1, 4.0),
        ("idle_health", idle_health, 100, 0.0),
        ("health_keepalive", keep_alive_spam, 20, 0.0),
        ("flood_call", frame_flood, 1, 1.0),
    ]
    async with trio.open_nursery() as nursery:
        for kind, make, n, pause in kinds:
            for _ in range(n):
                nursery.start_soon(forever, kind, make, pause)
        await trio.sleep_until(deadline)
        nursery.cancel_scope.cancel()
    return counts


# -- the gateway and the sampler (this process) --


async def probe(port: int) -> float | None:
    """Milliseconds for a well-behaved GET /readyz on a fresh connection; None: no answer."""
    started = time.perf_counter()
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n")
                if (await stream.receive_some(4096)).startswith(b"HTTP/1.1 "):
                    return round(1000 * (time.perf_counter() - started), 1)
        except (OSError, trio.BrokenResourceError):
            pass
    return None


def sample(server: Server, started: float, probe_ms: float | None = None) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mb": round(rss_kb() / 1024, 2),
        "fds": open_fds(),
        "tasks": task_count(),
        "live": server.live,
        "accepted": server.stats.calls_accepted,
        "failed": server.stats.calls_failed,
        "dropped": server.stats.audio_frames_dropped + server.stats.frames_flood_dropped,
        "refused": sum(server.stats.connections_refused.values()),
        "probe_ms": "-" if probe_ms is None else probe_ms,
        "frozen": gc.get_freeze_count(),  # gateway.ops.collector: a leak here is frozen cycles
    }


COLUMNS = ("t", "rss_mb", "fds", "tasks", "live", "accepted", "failed", "dropped", "refused")
COLUMNS += ("probe_ms", "frozen")


def show(row: dict[str, Any]) -> None:
    print(" ".join(f"{row[c]:>9}" for c in COLUMNS), flush=True)


async def soak(args: argparse.Namespace, model_url: str | None) -> dict[str, Any]:
    if model_url is None:
        processor = load_processor("echo")
    else:
        options: dict[str, Any] = {**echo_model.realtime_options(model_url)}
        if args.model_faults:
            options |= {"session_max_s": MODEL_SESSION_S, "rollover_before_s": MODEL_SESSION_S / 2}
        processor = load_processor("realtime", options)
    async with trio.open_nursery() as nursery:
        settings: dict[str, Any] = {}
        token = None
        if args.hostile:
            issuer = AcsTokenIssuer()
            keys: KeySetServer = await nursery.start(serve_key_set, issuer)
            settings = {"acs_resource_id": RESOURCE_ID, "auth_key_set_url": keys.url}
            token = issuer.token(RESOURCE_ID, lifetime=args.duration + 3600)
        config = Config(host="127.0.0.1", port=0, max_calls=100_000, **settings)
        server: Server = await nursery.start(serve, config, processor)
        health_port = None
        if args.hostile:
            assert server.auth is not None
            await server.auth.keys.first_fetch_done.wait()
            health = partial(serve_health, metrics=server.metrics.exposition)
            health_port = await nursery.start(health, "127.0.0.1", 0, server.readiness)
        collector.install()  # as `acs-media-gateway serve` does after start-up
        await trio.sleep(0.5)
        started = time.monotonic()
        baseline = sample(server, started)
        print(" ".join(f"{c:>9}" for c in COLUMNS))
        show(baseline)
        load_cmd = [
            sys.executable, __file__, "--load", server.urls[0],
            "--concurrency", str(args.concurrency), "--duration", str(args.duration),
            "--call-seconds", args.call_seconds, "--seed", str(args.seed),
        ]  # fmt: skip
        load_cmd += ["--bridged"] if args.bridged else []
        load_cmd += ["--model-faults"] if args.model_faults else []
        env = {**os.environ, "SOAK_TOKEN": token or ""}
        done = trio.Event()
        result: list[subprocess.CompletedProcess[bytes]] = []
        attacked: list[subprocess.CompletedProcess[bytes]] = []

        async def run_load() -> None:
            result.append(
                await trio.run_process(load_cmd, capture_stdout=True, check=False, env=env)
            )
            done.set()

        async def run_attack() -> None:
            ports = f"{server.port},{health_port}"
            command = [
                sys.executable,
                __file__,
                "--attack",
                ports,
                "--duration",
                str(args.duration),
            ]
            attacked.append(
                await trio.run_process(command, capture_stdout=True, check=False, env=env)
            )

        nursery.start_soon(run_load)
        if args.hostile:
            nursery.start_soon(run_attack)
        samples = [baseline]
        probes: list[float | None] = []
        warm: dict[str, Any] | None = None
        next_at = trio.current_time() + args.sample_every
        while not done.is_set():
            with trio.move_on_at(next_at):
                await done.wait()
            if done.is_set():
                break
            next_at += args.sample_every
            probe_ms = None
            if health_port is not None:
                probe_ms = await probe(health_port)
                probes.append(probe_ms)
            row = sample(server, started, probe_ms)
            samples.append(row)
            show(row)
            if warm is None and row["t"] >= args.warmup:
                warm = row
        end_of_load = samples[-1]
        with trio.move_on_after(SETTLE_TIMEOUT):
            # the server counts calls and handshakes; there is no event to wait on
            while server.live or server.context.admission.pending or len(attacked) < args.hostile:  # noqa: ASYNC110
                await trio.sleep(0.1)
        await trio.sleep(1.0)
        final = sample(server, started)
        show(final)
        server.drain(0)
        await server.stopped.wait()
        nursery.cancel_scope.cancel()
    (load,) = result
    lines = [ln for ln in load.stdout.decode().splitlines() if ln.startswith("LOAD ")]
    counts = json.loads(lines[-1][5:]) if lines else {"load_exit": load.returncode}
    attack_counts: dict[str, Any] = {}
    if attacked:
        lines = [ln for ln in attacked[0].stdout.decode().splitlines() if ln.startswith("ATTACK ")]
        attack_counts = json.loads(lines[-1][7:]) if lines else {"exit": attacked[0].returncode}
    answered = sorted(p for p in probes if p is not None)
    warm = warm or baseline
    growth = 100 * (end_of_load["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
    stats = server.stats
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "load": counts,
        "attack": attack_counts,
        "probes": {
            "answered": len(answered),
            "unanswered": len(probes) - len(answered),
            "median_ms": answered[len(answered) // 2] if answered else None,
            "max_ms": answered[-1] if answered else None,
        },
        "calls_accepted": stats.calls_accepted,
        "upstream_errors": dict(stats.upstream_errors),  # the model's side (bridged)
        "realtime": dict(stats.realtime),  # rollovers, reconnects, audio dropped (bridged)
        "calls_failed": stats.calls_failed,
        "audio_frames_dropped": stats.audio_frames_dropped,  # inbound queue full
        "frames_flood_dropped": stats.frames_flood_dropped,
        "ended_by": dict(stats.ended_by),
        "handshakes_failed": dict(stats.handshake_failures),
        "auth_failed": dict(stats.auth_failed),
        "connections_refused": dict(stats.connections_refused),
        "accept_errors": dict(stats.accept_errors),
        "rss_idle_mb": baseline["rss_mb"],
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_at_end_mb": end_of_load["rss_mb"],
        "rss_growth_after_warmup_pct": round(growth, 2),
        "rss_after_calls_ended_mb": final["rss_mb"],
        "fds_baseline": baseline["fds"],
        "fds_after_calls_ended": final["fds"],
        "tasks_baseline": baseline["tasks"],
        "tasks_after_calls_ended": final["tasks"],
        "frozen_baseline": baseline["frozen"],
        "frozen_after_calls_ended": final["frozen"],
        "live_after": final["live"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=30, help="calls live at once")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of call churn")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the RSS mark")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--call-seconds", default="2,10", help="each call's length: MIN,MAX")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hostile", action="store_true", help="token checks, health port, and the attack beside"
    )
    parser.add_argument(
        "--bridged", action="store_true", help="the realtime processor, against a fake model"
    )
    parser.add_argument(
        "--model-faults", action="store_true", help="with --bridged: sessions expire and drop"
    )
    parser.add_argument(
        "--drop-share", type=float, default=0.003, help="with --model-faults: of appends"
    )
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--attack", metavar="PORTS", help=argparse.SUPPRESS)  # the other child
    args = parser.parse_args()
    low, high = (float(x) for x in args.call_seconds.split(","))
    if args.load:
        token = os.environ.get("SOAK_TOKEN") or None
        counts = trio.run(
            place_calls,
            args.load,
            args.concurrency,
            args.duration,
            (low, high),
            args.seed,
            token,
            args.bridged,
            args.model_faults,
        )
        print("LOAD " + json.dumps(counts), flush=True)
        return
    if args.attack:
        raise_descriptor_limit()
        media, health = (int(p) for p in args.attack.split(","))
        token = os.environ.get("SOAK_TOKEN") or None
        counts = trio.run(attack, media, health, args.duration, token)
        print("ATTACK " + json.dumps(counts), flush=True)
        return
    logging.basicConfig(level=logging.ERROR)
    faults = [
        *("--session-max-s", str(MODEL_SESSION_S)),
        *("--drop-share", str(args.drop_share), "--seed", str(args.seed)),
    ]
    model_args = faults if args.model_faults else []
    r = echo_model.run_beside(args.bridged, soak, args, model_args=model_args)
    report = r.get("model")
    print("RESULT " + json.dumps(r), flush=True)
    fds_ok = r["fds_after_calls_ended"] == r["fds_baseline"]
    tasks_ok = r["tasks_after_calls_ended"] == r["tasks_baseline"]
    flat = abs(r["rss_growth_after_warmup_pct"]) <= 5.0
    model_verdict = "all closed" if report is None or report.get("live") == 0 else "LEFT OPEN"
    print(
        f"calls: {r['load']}, accepted {r['calls_accepted']}, failed {r['calls_failed']}\n"
        f"attack: {r['attack']}\nrefused at accept: {r['connections_refused']}, "
        f"handshakes failed: {r['handshakes_failed']}, tokens refused: {r['auth_failed']}\n"
        f"health probes: {r['probes']}\n"
        + (f"model side: {r['upstream_errors']}, {r['realtime']}\n" if report else "")
        + f"RSS: idle {r['rss_idle_mb']} MB, after warm-up {r['rss_after_warmup_mb']} MB, "
        f"end of load {r['rss_at_end_mb']} MB ({r['rss_growth_after_warmup_pct']:+.2f}%), "
        f"after the calls ended {r['rss_after_calls_ended_mb']} MB\n"
        f"fds: baseline {r['fds_baseline']}, after {r['fds_after_calls_ended']}; "
        f"tasks: baseline {r['tasks_baseline']}, after {r['tasks_after_calls_ended']}; "
        f"objects frozen: baseline {r['frozen_baseline']}, after {r['frozen_after_calls_ended']}\n"
        f"VERDICT: RSS {'flat' if flat else 'GREW'} (goal: within 5%), "
        f"fds {'back to baseline' if fds_ok else 'LEAKED'}, "
        f"tasks {'back to baseline' if tasks_ok else 'LEAKED'}"
        + ("" if report is None else f", model sessions {model_verdict} ({report})")
    )


if __name__ == "__main__":
    main()
