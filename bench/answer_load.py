"""Answering under load: N incoming calls rung within a few seconds, against the fake ACS.

    python bench/answer_load.py --calls 200 --within 10

The gateway runs as `python -m gateway serve` in its own process (TLS with a throwaway CA,
`public_url`, ACS's JWT checked, answering through the real SDK). This process runs the fake
ACS (`gateway.testing.open_fake_acs`): it subscribes the gateway's Event Grid webhook, rings
the calls at an even pace, answers the SDK's REST requests (HMAC checked), posts callbacks, and
opens each call's media WebSocket with the simulated ACS peer. A call counts as streaming when
one second of speech it sends comes back byte-exact (echo).

Prints how many calls were answered and streaming, and per call (p50/p99/max):

- event -> answer: from the fake starting the Event Grid post to the gateway's answer request
  arriving at the fake (webhook TLS connect, the gateway's work, the SDK's request);
- post: the Event Grid post until its 200 (the gateway replies once the answer is done);
- answered -> media: from the answer request arriving to the media WebSocket open;
- the gateway's own `acs_gateway_answer_latency_seconds` (event read -> request handed to the
  SDK), from its `/metrics`: count and the share within 10 and 50 ms (histogram buckets).

The fake is the load generator and shares the machine: on a busy machine it, not the gateway,
may be the bottleneck (its CPU is printed). Also prints a `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
import trustme

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.testing import AcsTokenIssuer, open_fake_acs, serve_key_set, speech  # noqa: E402
from gateway.testing.fake_acs import RESOURCE_ID  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
SECOND = speech(16000)[:32000]
SECRET = "bench-eventgrid-secret"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:>18}: n={len(ms):4d} p50={percentile(ms, 0.5):7.1f} ms "
        f"p99={percentile(ms, 0.99):7.1f} ms max={max(ms, default=float('nan')):7.1f} ms"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def histogram(metrics: str, name: str) -> dict[str, float]:
    """`le` -> cumulative count of one histogram in Prometheus text."""
    found = {}
    for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M):
        found[match[1]] = float(match[2])
    return found


async def run(calls: int, within: float, per_call: float) -> dict[str, object]:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    issuer = AcsTokenIssuer()
    event_to_answer: list[float] = []
    post: list[float] = []
    to_media: list[float] = []
    streaming = 0
    with tempfile.TemporaryDirectory(prefix="answer-load-") as folder:
        cert, key, conf = (Path(folder) / n for n in ("cert.pem", "key.pem", "gateway.toml"))
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        port, health = free_port(), free_port()
        public_url = f"https://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            keys = await nursery.start(serve_key_set, issuer)
            async with open_fake_acs(issuer=issuer, client_ssl=trusting) as acs:
                conf.write_text(
                    f'host = "127.0.0.1"\nport = {port}\nhealth_host = "127.0.0.1"\n'
                    f"health_port = {health}\n"
                    f'public_url = "{public_url}"\ntls_certfile = "{cert}"\n'
                    f'tls_keyfile = "{key}"\nacs_resource_id = "{RESOURCE_ID}"\n'
                    f'auth_key_set_url = "{keys.url}"\nlog_level = "warning"\n'
                    f"answer_timeout = {per_call}\n"
                )
                env = {
                    **os.environ,
                    "PYTHONPATH": ROOT,  # `serve` from this tree
                    "ACS_CONNECTION_STRING": acs.connection_string,
                    "ACS_GATEWAY_CALL_TOKEN_KEY": "b" * 32,
                    "ACS_GATEWAY_EVENTGRID_SECRET": SECRET,
                    "REQUESTS_CA_BUNDLE": acs.ca_path,  # the SDK's requests trusts the fake
                }
                command = [sys.executable, "-m", "gateway", "serve", "--config", str(conf)]
                gateway = await trio.lowlevel.open_process(command, env=env)
                try:
                    metrics_url = f"http://127.0.0.1:{health}/metrics"
                    async with httpx.AsyncClient() as http:
                        with trio.fail_after(30):
                            while True:
                                try:
                                    if (await http.get(metrics_url)).status_code == 200:
                                        break
                                except httpx.HTTPError:
                                    pass
                                await trio.sleep(0.1)
                        await acs.subscribe(f"{public_url}/eventgrid?secret={SECRET}")

                        async def one() -> None:
                            nonlocal streaming
                            call = await acs.ring()
                            assert call.rung_at is not None
                            post.append(trio.current_time() - call.rung_at)
                            with trio.move_on_after(per_call):
                                await call.media_connected.wait()
                                assert call.media is not None
                                await call.media.stream(SECOND)
                                await call.media.wait_for_audio(len(SECOND))
                                if call.media.received_pcm == SECOND:
                                    streaming += 1
                            if call.answered_at is not None:
                                event_to_answer.append(call.answered_at - call.rung_at)
                                if call.media_connected_at is not None:
                                    to_media.append(call.media_connected_at - call.answered_at)
                            await acs.hang_up(call)

                        began, cpu = time.perf_counter(), time.process_time()
                        async with trio.open_nursery() as ringing:
                            for _ in range(calls):
                                ringing.start_soon(one)
                                await trio.sleep(within / calls)
                        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
                        metrics = (await http.get(metrics_url)).text
                finally:
                    gateway.terminate()
                    with trio.move_on_after(10):
                        await gateway.wait()
                    gateway.kill()
            nursery.cancel_scope.cancel()
    answers = re.search(r'^acs_gateway_answers_total{result="answered"} (\S+)$', metrics, re.M)
    answered_count = int(float(answers[1])) if answers else 0
    own = histogram(metrics, "acs_gateway_answer_latency_seconds")
    total = own.get("+Inf", 0.0)
    print(
        f"{calls} calls rung within {within:g} s: {answered_count} answered, {streaming} streaming"
    )
    print(f"wall {wall:.1f} s; the fake ACS (this process) used {cpu:.1f} s of CPU")
    for name, values in (
        ("event -> answer", event_to_answer),
        ("post", post),
        ("answered -> media", to_media),
    ):
        print(line(name, values))
    within_10 = own.get("0.01", 0.0) / total if total else float("nan")
    within_50 = own.get("0.05", 0.0) / total if total else float("nan")
    print(
        f"gateway's own answer latency: n={total:.0f}, {within_10:.1%} within 10 ms, "
        f"{within_50:.1%} within 50 ms"
    )
    result = {
        "calls": calls,
        "within": within,
        "answered": answered_count,
        "streaming": streaming,
        "event_to_answer_p99_ms": percentile(event_to_answer, 0.99) * 1000,
        "event_to_answer_p50_ms": percentile(event_to_answer, 0.5) * 1000,
        "post_p99_ms": percentile(post, 0.99) * 1000,
        "answered_to_media_p99_ms": percentile(to_media, 0.99) * 1000,
        "gateway_answer_within_50ms": within_50,
        "fake_cpu_s": cpu,
    }
    print("RESULT " + json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--within", type=float, default=10.0, help="seconds to ring them in")
    parser.add_argument("--timeout", type=float, default=20.0, help="per call, seconds")
    args = parser.parse_args()
    result = trio.run(run, args.calls, args.within, args.timeout)
    return 0 if result["streaming"] == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
