"""The fake realtime model from `gateway.testing`, answering every appended chunk at once.

    python bench/echo_model.py                      # prints its ws:// URL, runs until stdin closes
    python bench/echo_model.py --tls-ca /tmp/ca.pem # wss://, its CA's certificate written there
    python bench/echo_model.py --burst-ms 400       # answers in bursts of 400 ms of audio

When stdin closes it prints `MODEL {json}` (sessions opened, and still open) and exits: a
benchmark that ends its calls first can check that none left its upstream connection open.
`start()` and `finish()` run it so from another benchmark.

The fake model's echo mode (`open_fake_model(echo=True)`), for `bench/yardstick.py`'s bridged
runs and the bridged soak and fuzz: the gateway's realtime processor connects to it as to the
real service (handshake, `session.update`), and every `input_audio_buffer.append` comes
straight back as a `response.output_audio.delta` of one long response, the base64 untouched.
So a bridged call carries audio both ways at the caller's real-time rate, like an echo call,
and the load generator can time the round trip through the model. Never: VAD, scripted replies
or recording the audio events (a long run at hundreds of calls would keep them all).

Faults, for a soak of the bridge's failure paths: `--session-max-s S` ends every session S
seconds after it opened, as the service does (an `error` event `session_expired`, then the
close); `--drop-share P` aborts a session's connection at an append with probability P
(`--seed`), as a network fault would.

`--burst-ms N`: hold the answers until N ms of audio waits (the appends are the gateway's 40 ms
batches, counted), then send them all at once, each append its own delta, as a real model
streams a reply faster than real time. The audio still flows at the caller's rate on average,
but each burst arrives faster than ACS plays it: the gateway paces it out frame by frame, and a
bridge that does not pace sends it on as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import echo_load  # noqa: E402

from gateway.testing import open_fake_model  # noqa: E402
from gateway.testing.fake_model_echo import EchoSession  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "BENCH_REALTIME_KEY"  # the gateway's `api_key_env`


class DroppingEchoSession(EchoSession):
    """An echo session that, at each append, is dropped with probability `share` (its TCP
    connection aborted: no close handshake), as a network fault would end it."""

    share = 0.0
    rng = random.Random(1)

    async def echo(self, audio: str, burst: int) -> None:
        if self.rng.random() < self.share:
            await self.ws.abort()
            return
        await super().echo(audio, burst)


def start(
    cpu: int | None = None, tls_ca: str | None = None, burst_ms: int = 0, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """This model in a process of its own (on core `cpu`, if given); its URL. With `tls_ca`,
    over TLS (its CA's certificate written there); `burst_ms`: it answers in bursts; `extra`:
    more of its options (faults)."""
    cmd = [sys.executable, __file__, *extra]
    cmd = ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd
    cmd += ["--tls-ca", tls_ca] if tls_ca else []
    cmd += ["--burst-ms", str(burst_ms)] if burst_ms else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith(("ws://", "wss://")):
        proc.kill()
        raise SystemExit("the fake model did not start")
    return proc, url


def realtime_options(url: str) -> dict[str, str]:
    """The realtime processor's options for this model at `url` (any key will do)."""
    os.environ.setdefault(KEY_ENV, "bench-key")
    return {"endpoint": url, "api_key_env": KEY_ENV, "provider": "openai"}


def run_beside(
    bridged: bool,
    main: Callable[..., Awaitable[dict[str, Any]]],
    *args: Any,
    model_args: Sequence[str] = (),
) -> dict[str, Any]:
    """`trio.run(main, *args, url)`: with `bridged`, this model in a process of its own at
    `url` (with `model_args`) and its report in the result's "model"; else `url` is None."""
    if not bridged:
        return trio.run(main, *args, None)
    proc, url = start(extra=model_args)
    try:
        result = trio.run(main, *args, url)
    finally:
        report = finish(proc)
    result["model"] = report
    return result


def finish(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Close its stdin; its report (`connections` opened, `live` still open)."""
    try:
        out = proc.communicate(timeout=10)[0].decode()  # closes stdin first
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"exit": "killed: no report in 10 s"}
    lines = [ln for ln in out.splitlines() if ln.startswith("MODEL ")]
    return json.loads(lines[-1][6:]) if lines else {"exit": proc.returncode}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tls-ca", help="serve wss://; write the throwaway CA's certificate here")
    parser.add_argument("--burst-ms", type=int, default=0, help="answer in bursts of this much")
    parser.add_argument("--session-max-s", type=float, help="sessions expire this long after")
    parser.add_argument("--drop-share", type=float, default=0.0, help="of appends: drop instead")
    parser.add_argument("--seed", type=int, default=1, help="of the drops")
    args = parser.parse_args()
    context = echo_load.model_tls(args.tls_ca) if args.tls_ca else None
    DroppingEchoSession.share = args.drop_share
    DroppingEchoSession.rng = random.Random(args.seed)
    echo = {"echo": True, "echo_burst_ms": args.burst_ms}  # `gateway.testing.fake_model_echo`
    faults = {"session_max_s": args.session_max_s}
    async with open_fake_model(ssl_context=context, **echo, **faults) as model:
        if args.drop_share:
            model.session_type = DroppingEchoSession
        print(model.url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes stdin
        report = {"connections": model.connections, "live": model.live}
        print("MODEL " + json.dumps(report), flush=True)


if __name__ == "__main__":
    trio.run(main)
