"""Hostile input at volume against a live gateway, with a canary call: does anything get through?

    python bench/fuzz_live.py --inputs 100000 --concurrency 16 --seed 1

Runs the gateway (echo) in this process on 127.0.0.1 and, beside one real-time canary call,
`--concurrency` hostile connections at a time until `--inputs` hostile inputs have been sent.
A connection is either a generated session (`gateway.testing.hostile.random_session`: metadata
real, mutated or absent; arbitrary bytes, arbitrary JSON and mutated real packets as text and
binary messages, pings, some good audio; sometimes RFC 6455 framing garbage; then a close, FIN,
reset, or reset/FIN in the middle of a frame), or a good connection's bytes cut at a random
point or with random bytes spliced in, sent verbatim from the first byte and then reset.
Each message, garbage write or cut connection counts as one input.

Prints: inputs and connections sent, crashes (an exception out of a call: `calls_failed`, or out
of the server), cross-call effects (the canary's echo not byte-exact, or the canary closed),
and leaked fds and tasks (after the hostile calls end, against the census taken before them),
and connections counted nowhere: each must be accepted, refused (at accept, unread, or after
its request) or a failed handshake. Every hostile connection comes from 127.0.0.1, and with
the gateway's default bound of 100 pending handshakes per source more than half of them would
be refused at accept at this pace, unread (12,923 of 23,198 with `--seed 1`), so the gateway
here has no per-source bound unless `--per-source N` gives one.
Also a `RESULT {json}` line. The same `--seed` replays the same inputs.

`--bridged`: the gateway runs the realtime processor instead (OpenAI's dialect: 24 kHz to the
model), against `bench/echo_model.py` in a process of its own, which sends each appended chunk
straight back as the model's audio. Every hostile call that gets as far as its metadata opens
a model session, and a 16 kHz one resamples both ways; the canary talks at 24 kHz, which
passes through unresampled, so its echo is still exact. Also checked: every model session
the calls opened was closed (the model's count).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_model  # noqa: E402

from gateway.acs.packets import frame_bytes  # noqa: E402
from gateway.testing import open_gateway, simulated_call  # noqa: E402
from gateway.testing.census import open_fds, rss_kb, task_count  # noqa: E402
from gateway.testing.hostile import (  # noqa: E402
    RawPeer,
    Session,
    canary_frame,
    cut_or_spliced,
    keep_talking,
    random_session,
)

SETTLE_TIMEOUT = 30.0  # seconds for the hostile calls to end after the last input
CUT_SHARE = 0.2  # connections sent as a cut or spliced good connection


async def fuzz(args: argparse.Namespace, model_url: str | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    counts = {"inputs": 0, "connections": 0, "by_ending": dict.fromkeys(
        ("close", "fin", "reset", "reset_mid_frame", "fin_mid_frame", "verbatim"), 0)}  # fmt: skip
    processor: dict[str, Any] = {}
    if model_url is not None:
        options = echo_model.realtime_options(model_url)
        processor = {"processor": "realtime", "processors": {"realtime": options}}
    rate = 24000 if model_url is not None else 16000
    frame = frame_bytes(rate)
    async with open_gateway(
        **processor,
        handshake_timeout=args.timeout,
        metadata_timeout=args.timeout,
        max_pending_handshakes_per_source=args.per_source,
    ) as server:
        url = server.urls[0]
        async with simulated_call(url, connection_id="canary", sample_rate=rate) as canary:
            # the canary is up before the census (a bridge sends the caller's audio up in
            # 40 ms events: two frames)
            for k in range(2):
                await canary.send_audio(canary_frame(k, rate))
            with trio.fail_after(10):
                await canary.wait_for_audio(frame)
            tasks, fds, rss0 = task_count(), open_fds(), rss_kb()
            started = time.monotonic()
            sent_inputs = trio.Event()

            async def hostile(worker: int) -> None:
                while counts["inputs"] < args.inputs:
                    if rng.random() < CUT_SHARE:
                        session = Session((cut_or_spliced(rng),), "reset")
                        counts["by_ending"]["verbatim"] += 1
                        peer = await RawPeer.open(url)
                    else:
                        session = random_session(rng)
                        counts["by_ending"][session.ending] += 1
                        peer = await RawPeer.connect(url, ("x-ms-call-connection-id", f"h{worker}"))
                    counts["inputs"] += max(1, session.inputs)
                    counts["connections"] += 1
                    await peer.play(session)
                    if counts["connections"] % 2000 == 0:
                        print(
                            f"{time.monotonic() - started:7.1f} s: {counts['inputs']} inputs, "
                            f"{counts['connections']} connections, "
                            f"calls_failed {server.stats.calls_failed}",
                            flush=True,
                        )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_talking, canary, sent_inputs)
                async with trio.open_nursery() as attackers:
                    for worker in range(args.concurrency):
                        attackers.start_soon(hostile, worker)
                sent_inputs.set()
            elapsed = time.monotonic() - started
            if len(canary.sent[None]) // frame % 2:  # a bridge holds an odd last frame
                await canary.send_audio(canary_frame(len(canary.sent[None]) // frame, rate))
            with trio.fail_after(SETTLE_TIMEOUT):
                await canary.wait_for_audio(len(canary.sent[None]))
            with trio.move_on_after(SETTLE_TIMEOUT):
                while server.live > 1 or task_count() != tasks or open_fds() != fds:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            sent = bytes(canary.sent[None])
            # all from one address: beyond `max_pending_handshakes_per_source` connections not
            # yet read, new ones are closed at once
            refused_at_accept = sum(server.stats.connections_refused.values())
            cross_call = int(canary.received_pcm != sent) + int(canary.closed.is_set())
            result = {
                "seed": args.seed,
                **counts,
                "seconds": round(elapsed, 1),
                "inputs_per_s": round(counts["inputs"] / elapsed),
                "crashes": server.stats.calls_failed,
                "calls_failed": server.stats.calls_failed,
                "cross_call_effects": cross_call,
                "canary_frames_sent": len(sent) // frame,
                "canary_frames_echoed_exactly": _exact_frames(canary.received_pcm, sent, frame),
                "leaked_fds": open_fds() - fds,
                "leaked_tasks": task_count() - tasks,
                "live_hostile_calls_left": server.live - 1,
                "rss_growth_mb": round((rss_kb() - rss0) / 1024, 1),
                "calls_accepted": server.stats.calls_accepted,
                # every connection counted once: accepted, refused (at accept, unread, or in
                # its handshake), or a failed handshake
                "uncounted_connections": 1
                + counts["connections"]
                - server.stats.calls_accepted
                - refused_at_accept
                - server.stats.calls_refused
                - server.stats.handshakes_failed,
                "refused_at_accept": refused_at_accept,
                "handshakes_failed": server.stats.handshakes_failed,
                "ended_by": dict(server.stats.ended_by),
                "protocol_errors": sum(server.stats.protocol_errors.values()),
            }
    return result


def _exact_frames(received: bytes, sent: bytes, frame: int) -> int:
    """Frames of the canary's echo that match what it sent, position by position."""
    return sum(received[i : i + frame] == sent[i : i + frame] for i in range(0, len(sent), frame))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16, help="hostile connections at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="handshake and metadata timeouts (s)"
    )
    parser.add_argument(
        "--per-source",
        type=int,
        default=None,
        metavar="N",
        help="the gateway's max_pending_handshakes_per_source (default: none, see above)",
    )
    parser.add_argument(
        "--bridged", action="store_true", help="the realtime processor, against a fake model"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)  # a gateway failure shows here
    r = echo_model.run_beside(args.bridged, fuzz, args)
    print("RESULT " + json.dumps(r))
    print(
        f"inputs {r['inputs']} over {r['connections']} connections in {r['seconds']} s "
        f"({r['inputs_per_s']}/s)\n"
        f"crashes {r['crashes']}, cross-call effects {r['cross_call_effects']} "
        f"(canary {r['canary_frames_echoed_exactly']}/{r['canary_frames_sent']} frames exact), "
        f"calls_failed {r['calls_failed']}, leaked fds {r['leaked_fds']}, "
        f"leaked tasks {r['leaked_tasks']}, hostile calls left {r['live_hostile_calls_left']}, "
        f"uncounted connections {r['uncounted_connections']} (refused at accept: "
        f"{r['refused_at_accept']})"
    )
    if "model" in r:
        print(f"model sessions: {r['model']} (live: still open once the calls had ended)")


if __name__ == "__main__":
    main()
