"""ACS authentication: the token is checked before the upgrade (docs/security.md, "Authentication").

Real sockets on 127.0.0.1 and a local key-set server (`gateway.testing.acs_auth`); the clock is
Trio's real one, since the key fetches go over a real socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
import trio_websocket
from cryptography.hazmat.primitives import serialization

from gateway.server.auth import AuthFailure, TokenChecker, bearer_token
from gateway.server.serve import Server
from gateway.testing import (
    AcsTokenIssuer,
    KeySetServer,
    bearer,
    open_gateway,
    serve_key_set,
    simulated_call,
)

RESOURCE = "3d20e1de-0f28-41c5-84c4-4a7e0a6c1b3e"  # an ACS immutable resource id
FRAME = bytes(640)


@pytest.fixture(scope="module")
def issuer() -> AcsTokenIssuer:
    return AcsTokenIssuer(("acs-key-1",))


@pytest.fixture(scope="module")
def impostor() -> AcsTokenIssuer:
    """Someone else's key, published under ACS's key id."""
    return AcsTokenIssuer(("acs-key-1",))


@asynccontextmanager
async def auth_gateway(
    issuer: AcsTokenIssuer, **settings: Any
) -> AsyncIterator[tuple[Server, KeySetServer]]:
    async with trio.open_nursery() as nursery:
        keys: KeySetServer = await nursery.start(serve_key_set, issuer)
        settings = {"acs_resource_id": RESOURCE, "auth_key_set_url": keys.url, **settings}
        async with open_gateway(**settings) as server:
            assert server.auth is not None
            await server.auth.keys.first_fetch_done.wait()
            yield server, keys
        nursery.cancel_scope.cancel()


async def connect(server: Server, headers: list[tuple[str, str]]) -> int:
    """101 if the call was accepted (and echoes), else the HTTP status it was refused with."""
    try:
        async with simulated_call(server.urls[0], headers=headers) as call:
            await call.stream(FRAME, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(FRAME))
            return 101
    except trio_websocket.HandshakeError as refused:
        return refused.status_code  # type: ignore[attr-defined,no-any-return]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HS256 keyed with the public key."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}".encode()
    return f"{signing_input.decode()}.{_b64(sign(signing_input))}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "https://acscallautomation.communication.azure.com",
        "aud": RESOURCE,
        "iat": now,
        "exp": now + 3600,
        **extra,
    }


def public_pem(issuer: AcsTokenIssuer) -> bytes:
    return (
        issuer.private_keys[issuer.key_id]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(orjson.dumps(claims(aud=RESOURCE, role='admin')))}.{signature}"


HOUR = 3600
CASES: dict[str, tuple[Callable[[AcsTokenIssuer, AcsTokenIssuer], list[tuple[str, str]]], str]] = {
    "valid": (lambda i, _: [bearer(i.token(RESOURCE))], ""),
    "valid, in the Authentication header (g.14)": (
        lambda i, _: [bearer(i.token(RESOURCE), "Authentication")],
        "",
    ),
    "expired within the leeway": (
        lambda i, _: [bearer(i.token(RESOURCE, issued=time.time() - HOUR - 10, lifetime=HOUR))],
        "",
    ),
    "expired": (
        lambda i, _: [bearer(i.token(RESOURCE, issued=time.time() - 2 * HOUR, lifetime=HOUR))],
        "expired",
    ),
    "not yet valid": (
        lambda i, _: [bearer(i.token(RESOURCE, not_before=time.time() + 600))],
        "not_yet_valid",
    ),
    "wrong audience": (lambda i, _: [bearer(i.token("another-resource"))], "wrong_audience"),
    "wrong issuer": (
        lambda i, _: [bearer(i.token(RESOURCE, issuer="https://evil.example"))],
        "wrong_issuer",
    ),
    "no expiry": (lambda i, _: [bearer(i.token(RESOURCE, claims={"exp": None}))], "missing_claim"),
    "a fractional expiry (a NumericDate may be one)": (
        lambda i, _: [bearer(i.token(RESOURCE, claims={"exp": time.time() + 600.5}))],
        "",
    ),
    # RFC 7519 section 2: NumericDate is a JSON number; PyJWT alone takes numeric strings.
    "exp a numeric string, in the future": (
        lambda i, _: [bearer(i.token(RESOURCE, claims={"exp": str(int(time.time()) + HOUR)}))],
        "malformed",
    ),
    "nbf a numeric string, in the past": (
        lambda i, _: [bearer(i.token(RESOURCE, claims={"nbf": str(int(time.time()) - 60)}))],
        "malformed",
    ),
    "iat a numeric string": (
        lambda i, _: [bearer(i.token(RESOURCE, claims={"iat": str(int(time.time()))}))],
        "malformed",
    ),
    "iat a boolean": (lambda i, _: [bearer(i.token(RESOURCE, claims={"iat": True}))], "malformed"),
    "signed by another key under ACS's key id": (
        lambda _, imp: [bearer(imp.token(RESOURCE))],
        "bad_signature",
    ),
    "payload changed after signing": (
        lambda i, _: [bearer(tampered(i.token("another-resource")))],
        "bad_signature",
    ),
    "unknown key id": (
        lambda i, _: [bearer(i.token(RESOURCE, key_id="rotated-key-9"))],
        "unknown_key",
    ),
    "alg none": (
        lambda i, _: [bearer(handmade({"alg": "none", "kid": i.key_id}, claims(), lambda m: b""))],
        "bad_algorithm",
    ),
    "HS256 keyed with the public key (key confusion)": (
        lambda i, _: [
            bearer(
                handmade(
                    {"alg": "HS256", "kid": i.key_id, "typ": "JWT"},
                    claims(),
                    lambda m: hmac.new(public_pem(i), m, hashlib.sha256).digest(),
                )
            )
        ],
        "bad_algorithm",
    ),
    "no key id": (
        lambda i, _: [bearer(handmade({"alg": "RS256"}, claims(), lambda m: b"x" * 256))],
        "no_key_id",
    ),
    "missing header": (lambda i, _: [], "missing_token"),
    "garbage token": (lambda i, _: [bearer("garbage.not-a.jwt")], "malformed"),
    "not a bearer token": (lambda i, _: [("Authorization", "Basic dXNlcjpwYXNz")], "malformed"),
    "empty bearer": (lambda i, _: [("Authorization", "Bearer")], "malformed"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_token_checks(case, issuer, impostor, caplog):
    make_headers, reason = CASES[case]
    headers = make_headers(issuer, impostor)
    caplog.set_level(logging.DEBUG)
    async with auth_gateway(issuer) as (server, _):
        status = await connect(server, headers)
    if not reason:
        assert status == 101
        assert not server.stats.auth_failed
        assert server.stats.calls_accepted == 1
    else:
        assert status == 401
        assert server.stats.auth_failed == {reason: 1}
        assert server.stats.calls_accepted == 0
        assert any(reason in r.getMessage() for r in caplog.records)
    for _, value in headers:  # the token never reaches the logs
        token = value.partition(" ")[2]
        if token:
            assert all(token not in r.getMessage() for r in caplog.records)


async def test_a_new_key_id_fetches_the_key_set_once_and_a_flood_of_them_no_more(issuer):
    async with auth_gateway(issuer, auth_key_refetch_interval=30) as (server, keys):
        assert await connect(server, [bearer(issuer.token(RESOURCE))]) == 101
        assert keys.fetches == 1  # at start
        # ACS rotated its keys: the new key id is fetched and accepted
        rotated = AcsTokenIssuer(("acs-key-2",))
        issuer.private_keys.update(rotated.private_keys)
        try:
            token = issuer.token(RESOURCE, key_id="acs-key-2")
            assert await connect(server, [bearer(token)]) == 101
            assert keys.fetches == 2
            # a flood of made-up key ids (at once and one after another) fetches nothing more
            statuses: list[int] = []

            async def made_up(n: int) -> None:
                kid_token = issuer.token(RESOURCE, key_id=f"made-up-{n}")
                statuses.append(await connect(server, [bearer(kid_token)]))

            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(made_up, n)
            for n in range(20, 30):
                await made_up(n)
        finally:
            del issuer.private_keys["acs-key-2"]
        assert statuses == [401] * 30
        assert keys.fetches == 2
        assert server.stats.auth_failed == {"unknown_key": 30}


async def test_unknown_key_ids_refetch_once_per_interval(issuer):
    # Real time (the key fetch is real I/O): an interval long enough for two refusals to fit
    # in it on a loaded machine.
    async with auth_gateway(issuer, auth_key_refetch_interval=1.0) as (server, keys):
        token = issuer.token(RESOURCE, key_id="made-up")
        assert await connect(server, [bearer(token)]) == 401
        assert await connect(server, [bearer(token)]) == 401
        assert keys.fetches == 2  # at start, and for the first unknown key id
        await trio.sleep(1.05)
        assert await connect(server, [bearer(token)]) == 401
        assert await connect(server, [bearer(token)]) == 401
        assert keys.fetches == 3  # one more after the interval; not one per token


async def test_a_key_server_that_is_down_means_503_and_no_hang(issuer):
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: connections are refused
    url = f"http://127.0.0.1:{port}/calling/keys"
    async with open_gateway(acs_resource_id=RESOURCE, auth_key_set_url=url) as server:
        with trio.fail_after(5):
            assert await connect(server, [bearer(issuer.token(RESOURCE))]) == 503
        assert server.auth is not None and server.auth.keys.fetch_failures >= 1
    assert server.stats.auth_failed == {"keys_unavailable": 1}


async def test_a_key_server_that_hangs_costs_at_most_the_handshake_timeout(issuer):
    async with trio.open_nursery() as nursery:
        keys: KeySetServer = await nursery.start(serve_key_set, issuer)
        keys.hang = True
        async with open_gateway(
            acs_resource_id=RESOURCE, auth_key_set_url=keys.url, handshake_timeout=0.5
        ) as server:
            start = trio.current_time()
            with trio.fail_after(5):
                status = await connect(server, [bearer(issuer.token(RESOURCE))])
            waited = trio.current_time() - start
            assert status == 503
            assert 0.4 <= waited < 2.0  # the handshake deadline, not the fetch's own timeout
        nursery.cancel_scope.cancel()
    assert server.stats.auth_failed == {"keys_unavailable": 1}


async def test_a_failed_refresh_keeps_the_cached_keys(issuer):
    async with auth_gateway(issuer, auth_key_refetch_interval=0.01) as (server, keys):
        assert await connect(server, [bearer(issuer.token(RESOURCE))]) == 101
        keys.status = 500
        await trio.sleep(0.02)
        assert await connect(server, [bearer(issuer.token(RESOURCE, key_id="x"))]) == 401
        assert keys.fetches == 2
        assert await connect(server, [bearer(issuer.token(RESOURCE))]) == 101
    assert server.stats.auth_failed == {"unknown_key": 1}


async def test_without_a_resource_id_no_token_is_asked_for():
    async with open_gateway() as server:
        assert server.auth is None
        assert await connect(server, []) == 101


def test_bearer_token_prefers_authorization():
    headers = {"authorization": "Bearer a.b.c", "authentication": "Bearer d.e.f"}
    assert bearer_token(headers) == "a.b.c"
    assert bearer_token({"authentication": "bearer  d.e.f "}) == "d.e.f"
    with pytest.raises(AuthFailure) as failure:
        bearer_token({})
    assert failure.value.reason == "missing_token" and failure.value.status == 401


async def test_checker_refuses_without_touching_the_network_for_bad_algorithms(issuer):
    class NoKeys:  # a key set that must not be asked: the algorithm is checked first
        loaded = True

        async def key(self, kid: str) -> None:
            raise AssertionError("asked for a key")

    checker = TokenChecker(NoKeys(), audience=RESOURCE, issuer="x", leeway=0)  # type: ignore[arg-type]
    token = handmade({"alg": "none", "kid": "k"}, claims(), lambda m: b"")
    with pytest.raises(AuthFailure) as failure:
        await checker.check({"authorization": f"Bearer {token}"})
    assert failure.value.reason == "bad_algorithm"


async def test_401_says_a_bearer_token_is_wanted_and_the_connection_closes(issuer):
    async with auth_gateway(issuer) as (server, _):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(4096):
                reply += data
        await stream.aclose()
    head = reply.lower()
    assert head.startswith(b"http/1.1 401")
    assert b"\r\nwww-authenticate: bearer\r\n" in head
    assert head.endswith(b"\r\n\r\nauthentication failed")


async def test_keys_missing_at_start_are_fetched_again_without_waiting_for_a_call(issuer):
    async with trio.open_nursery() as nursery:
        keys: KeySetServer = await nursery.start(serve_key_set, issuer)
        keys.status = 503  # the key server has a bad moment just as the gateway starts
        async with open_gateway(
            acs_resource_id=RESOURCE, auth_key_set_url=keys.url, auth_key_refetch_interval=0.2
        ) as server:
            assert server.auth is not None
            await server.auth.keys.first_fetch_done.wait()
            assert not server.auth.keys.loaded
            keys.status = 200
            await trio.sleep(0.5)
            assert server.auth.keys.loaded  # no handshake asked for it
            assert await connect(server, [bearer(issuer.token(RESOURCE))]) == 101
        nursery.cancel_scope.cancel()
