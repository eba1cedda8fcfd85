"""What reaching a call on another replica costs: callbacks forwarded, media claimed.

    python bench/replica_forwarding.py --calls 100 --callbacks 500

Two gateways in this process (each its own server, control plane and port; they share only
the call-token key, as replicas do), each with `replica_url` set to its own address. Each call
is answered by replica A (its home) and its media WebSocket opened on replica B, which claims
the call at A (`POST /replicas`, op `media`). Then callbacks that act on the live call
(MediaStreamingStarted/Stopped, alternating) are posted, as ACS would, over plain HTTP:

- to B, the holder: the event acts here (no hop);
- to A, the home: A forwards it to B (one signed request between replicas);

and media WebSockets are opened on A (the home: no claim) and on B (one claim). Prints
p50/p99/max per case, in milliseconds, and a `RESULT {json}` line. The answerer is a stand-in
(no SDK, no ACS): what is measured is the gateway's own work and the loopback hops.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import Config  # noqa: E402
from gateway.control import AnswerRequest, CallTokens, ControlPlane  # noqa: E402
from gateway.processors import load  # noqa: E402
from gateway.server.serve import Server, serve  # noqa: E402
from gateway.testing import simulated_call  # noqa: E402

KEY = b"k" * 32
SECRET = "bench-secret"
ECHO = load("echo", {})


class Handle:
    media_streaming: str | None = None
    caller = callee = None
    custom_context: dict[str, Any] = {}


class Answerer:
    def __init__(self) -> None:
        self.requests: dict[str, AnswerRequest] = {}

    async def answer(self, request: AnswerRequest) -> str:
        corr = request.incoming_call_context.removeprefix("ctx-")
        self.requests[corr] = request
        return f"conn-{corr}"

    def control(self, call_connection_id: str, incoming: Any) -> Any:
        return Handle()


def event(corr: str) -> dict[str, Any]:
    ident = {"kind": "phoneNumber", "rawId": "4:+18005550100", "phoneNumber": {"value": "+1"}}
    return {
        "id": f"ev-{corr}",
        "eventType": "Microsoft.Communication.IncomingCall",
        "subject": "s",
        "dataVersion": "1.0",
        "data": {
            "to": ident,
            "from": ident,
            "serverCallId": "srv",
            "incomingCallContext": f"ctx-{corr}",
            "correlationId": corr,
        },
    }


def callback(kind: str, corr: str) -> dict[str, Any]:
    return {
        "id": "cb",
        "source": "calling/callConnections/x",
        "type": f"Microsoft.Communication.{kind}",
        "specversion": "1.0",
        "data": {"callConnectionId": f"conn-{corr}", "correlationId": corr},
    }


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50": round(statistics.median(ms), 2),
        "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max": round(ms[-1], 2),
    }


async def replica(nursery: trio.Nursery) -> tuple[Server, ControlPlane, Answerer]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    config = Config(
        host="127.0.0.1",
        port=0,
        public_url="https://gw.example.com",
        replica_url=f"http://127.0.0.1:{port}",
        log_level="warning",
        max_calls=1000,
    )
    answerer = Answerer()
    control = ControlPlane(
        config,
        {"default": ECHO},
        answerer=answerer,
        tokens=CallTokens(KEY),
        eventgrid_secret=SECRET,
    )
    server = await nursery.start(partial(serve, config, ECHO, sockets=[sock], control=control))
    return server, control, answerer


async def main(calls: int, callbacks: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {
        k: [] for k in ("to_holder", "to_home", "media_home", "media_other")
    }
    async with trio.open_nursery() as nursery:
        a, a_control, a_answers = await replica(nursery)
        b, b_control, _ = await replica(nursery)
        async with httpx.AsyncClient() as http:
            for n in range(calls):
                corr = f"c{n}"
                reply = await http.post(
                    f"http://127.0.0.1:{a.port}/eventgrid?secret={SECRET}",
                    content=orjson.dumps([event(corr)]),
                    headers={"content-type": "application/json"},
                )
                assert reply.status_code == 200
                request = a_answers.requests[corr]
                target = urlsplit(request.transport_url)
                resource = f"{target.path}?{target.query}"
                # the media on the home (no claim), then on the other replica (a claim at A)
                for case, server in (("media_home", a), ("media_other", b)):
                    started = time.perf_counter()
                    async with simulated_call(
                        server.urls[0],
                        resource=resource,
                        correlation_id=corr,
                        connection_id=f"conn-{corr}",
                    ):
                        results[case].append(time.perf_counter() - started)
                if n == 0:
                    # keep one call live on B and post its callbacks
                    async with simulated_call(
                        b.urls[0],
                        resource=resource,
                        correlation_id=corr,
                        connection_id=f"conn-{corr}",
                    ) as live:
                        url = urlsplit(request.callback_url)
                        path = f"{url.path}?{url.query}"
                        for i in range(callbacks):
                            kind = "MediaStreamingStarted" if i % 2 else "MediaStreamingStopped"
                            body = orjson.dumps([callback(kind, corr)])
                            for case, server in (("to_holder", b), ("to_home", a)):
                                started = time.perf_counter()
                                reply = await http.post(
                                    f"http://127.0.0.1:{server.port}{path}",
                                    content=body,
                                    headers={"content-type": "application/json"},
                                )
                                results[case].append(time.perf_counter() - started)
                                assert reply.status_code == 200
                        assert not live.closed.is_set()
        forwards = dict(a_control.replicas.forwards) if a_control.replicas else {}
        claims = dict(b_control.replicas.forwards) if b_control.replicas else {}
        a.stop_now()
        b.stop_now()
    return {
        "ms": {case: summary(samples) for case, samples in results.items() if samples},
        "forwards_from_home": forwards,
        "claims_from_other": claims,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--callbacks", type=int, default=500)
    args = parser.parse_args()
    result = trio.run(main, args.calls, args.callbacks)
    for case, numbers in result["ms"].items():
        p50, p99, top = numbers["p50"], numbers["p99"], numbers["max"]
        print(f"{case:12} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {top:6.2f} ms")
    print(f"forwards from the home: {result['forwards_from_home']}")
    print(f"claims from the other replica: {result['claims_from_other']}")
    print("RESULT " + json.dumps(result))
