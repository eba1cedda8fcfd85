"""What ACS authentication costs a handshake, with a warm key cache.

    python bench/auth_handshake.py --handshakes 2000

Runs two gateways in this process on 127.0.0.1 (one with `acs_resource_id` set and a local
key-set server, one without) and a raw-socket client that alternates between them: connect,
send the upgrade request (with ACS's headers; with the token for the one that checks it), read
the 101, close. It prints the handshake time (connect to 101) for each, the process CPU time
per handshake (client and server together; the client's share is the same for both, so the
difference is what auth costs the gateway, and it is far less disturbed by other processes on
a shared machine than wall time), and the cost of one token check (`TokenChecker.check`, warm
cache) and of PyJWT's `decode` alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import trio

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.server.auth import TokenChecker  # noqa: E402
from gateway.server.serve import Server  # noqa: E402
from gateway.testing import AcsTokenIssuer, open_gateway, serve_key_set  # noqa: E402

RESOURCE = "3d20e1de-0f28-41c5-84c4-4a7e0a6c1b3e"


def upgrade_request(token: str | None) -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        "Host: gateway.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"x-ms-call-connection-id: {uuid.uuid4()}",
        f"x-ms-call-correlation-id: {uuid.uuid4()}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def handshake(server: Server, request: bytes) -> float:
    """Seconds from connecting to reading the 101."""
    start = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        await stream.send_all(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = await stream.receive_some(4096)
            if not data:
                break
            reply += data
        elapsed = time.perf_counter() - start
        if not reply.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"handshake refused: {reply[:80]!r}")
        return elapsed
    finally:
        await stream.aclose()


def summary(samples: list[float]) -> str:
    us = sorted(s * 1e6 for s in samples)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    return f"median {statistics.median(us):7.1f} us   p99 {p99:7.1f} us"


async def token_check_cost(checker: TokenChecker, token: str, n: int) -> tuple[float, float]:
    import jwt

    headers = {"authorization": f"Bearer {token}"}
    await checker.check(headers)  # warm the cache
    start = time.perf_counter()
    for _ in range(n):
        await checker.check(headers)
    check = (time.perf_counter() - start) / n
    key = await checker.keys.key(next(iter(checker.keys.keys)))
    start = time.perf_counter()
    for _ in range(n):
        jwt.decode(token, key, algorithms=["RS256"], audience=RESOURCE, issuer=checker.issuer)
    decode = (time.perf_counter() - start) / n
    return check, decode


async def main(handshakes: int) -> None:
    issuer = AcsTokenIssuer()
    token = issuer.token(RESOURCE)
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        async with (
            open_gateway(log_level="warning") as plain,
            open_gateway(acs_resource_id=RESOURCE, auth_key_set_url=keys.url) as checked,
        ):
            assert checked.auth is not None
            await checked.auth.keys.first_fetch_done.wait()
            times: dict[str, list[float]] = {"without auth": [], "with auth": []}
            cpu = {"without auth": 0.0, "with auth": 0.0}
            for i in range(handshakes + 100):  # alternate, so drift and noise hit both alike
                cpu0 = time.process_time()
                t_plain = await handshake(plain, upgrade_request(None))
                cpu1 = time.process_time()
                t_checked = await handshake(checked, upgrade_request(token))
                cpu2 = time.process_time()
                if i >= 100:  # the first ones warm up both servers
                    times["without auth"].append(t_plain)
                    times["with auth"].append(t_checked)
                    cpu["without auth"] += cpu1 - cpu0
                    cpu["with auth"] += cpu2 - cpu1
            check, decode = await token_check_cost(checked.auth, token, 2000)
            assert keys.fetches == 1, "the cache was not warm"
            assert checked.stats.auth_failed == {}
        nursery.cancel_scope.cancel()
    print(f"handshakes: {handshakes} each, alternating; connect -> 101, client in-process")
    for name, samples in times.items():
        per = cpu[name] / handshakes * 1e6
        print(f"  {name:13} {summary(samples)}   cpu {per:6.1f} us/handshake")
    added = statistics.median(times["with auth"]) - statistics.median(times["without auth"])
    added_cpu = (cpu["with auth"] - cpu["without auth"]) / handshakes
    print(f"  auth adds     {added * 1e6:7.1f} us at the median, {added_cpu * 1e6:.1f} us of CPU")
    print(f"token check (warm cache): {check * 1e6:.1f} us", end="; ")
    print(f"PyJWT decode alone: {decode * 1e6:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    args = parser.parse_args()
    trio.run(main, args.handshakes)
