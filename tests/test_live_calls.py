"""Callbacks that act on a live call (CallDisconnected, MediaStreamingFailed, Started/Stopped),
tokens that outlive a failed answer, ACS's JWT on callbacks, and the signed requests between
replicas. Real sockets on 127.0.0.1; the fake answerer or the fake ACS."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import trio
import trio_websocket

from gateway.control import AnswerFailed, CallTokens
from gateway.control.replicas import REPLICA_PATH, SIGNATURE_HEADER, ReplicaKey
from gateway.processors import Call, load
from gateway.testing import simulated_call
from gateway.testing.acs_auth import AcsTokenIssuer, bearer, serve_key_set
from tests.test_control import EG, KEY, FakeAnswerer, callback, http, incoming, plane, post, served

pytest.importorskip("azure.communication.callautomation")

from gateway.testing.answering import open_answering_gateway  # noqa: E402

ECHO = load("echo", {})
RESOURCE = "5a0b2a3c-0000-4000-8000-0000000000aa"


def keeping(seen: list[Call]) -> Any:
    async def processor(call: Call) -> None:
        seen.append(call)
        await ECHO(call)

    return processor


async def wait_until_no_live_calls(server: Any) -> None:
    with trio.fail_after(5):
        while server.live:  # noqa: ASYNC110  (the server has no "a call ended" event)
            await trio.sleep(0.01)


@pytest.mark.parametrize("kind", ["CallDisconnected", "MediaStreamingFailed"])
async def test_a_callback_that_ends_the_call_closes_its_open_media_as_a_hang_up(kind, caplog):
    caplog.set_level(logging.INFO, "gateway")
    seen: list[Call] = []
    async with open_answering_gateway(processors={"keep": keeping(seen)}, processor="keep") as gw:
        call = await gw.acs.ring()
        with trio.fail_after(10):
            await call.media_connected.wait()
            await call.wait_for_callback("MediaStreamingStarted")
        assert call.media is not None
        ((processor_call),) = seen
        assert processor_call.control is not None
        assert processor_call.control.media_streaming == "started"
        await gw.acs.callback(call, "MediaStreamingStopped")  # ACS says so; the socket stays
        assert processor_call.control.media_streaming == "stopped"
        assert not call.media.closed.is_set()
        # ACS's event races ahead of its socket's close: the gateway ends the call itself
        await gw.acs.callback(call, kind, result=(400, 8581, "Transport url is not valid"))
        with trio.fail_after(5):
            await call.media.closed.wait()
        await wait_until_no_live_calls(gw.server)
        assert gw.server.stats.ended_by == {"hangup": 1}
        assert processor_call.control.media_streaming == (
            "failed" if kind == "MediaStreamingFailed" else "stopped"
        )
        assert not gw.control.live.calls
        assert gw.control.answering is not None
        assert gw.control.answering.answered[call.correlation_id].state == "ended"
    assert call.media.close_code == 1000
    assert (
        f"ending the call: {'media streaming failed' if 'Failed' in kind else 'the call was'}"
        in (caplog.text)
    )
    if kind == "MediaStreamingFailed":
        assert "not reachable over wss:// from the internet" in caplog.text


@pytest.mark.parametrize("answerer", ["failed", "timeout", "ended"])
async def test_a_token_that_outlives_its_call_is_refused_with_410_and_counted(answerer):
    fake = FakeAnswerer(
        fail=AnswerFailed("ACS said no", 500) if answerer == "failed" else None,
        hang=answerer == "timeout",
    )
    control = plane(fake, answer_timeout=0.2)
    async with served(control) as server:
        body = orjson.dumps([incoming("c-late", to="4:+18005550100")])
        assert (await http(server, post(EG, body)))[0] == 200
        (request,) = fake.requests
        if answerer == "ended":  # answered, then hung up before its media came
            token = urlsplit(request.callback_url).query.removeprefix("token=")
            hung_up = orjson.dumps([callback("CallDisconnected", "c-late")])
            assert (await http(server, post(f"/callbacks?token={token}", hung_up)))[0] == 200
        target = urlsplit(request.transport_url)
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with simulated_call(
                server.urls[0], resource=f"{target.path}?{target.query}", correlation_id="c-late"
            ):
                pass
    assert refused.value.status_code == 410
    assert control.stats.refused["media_call_over"] == 1
    assert server.stats.calls_accepted == 0


@pytest.mark.parametrize(
    ("jwt", "status"),
    [
        ("valid", 200),
        ("expired", 401),
        ("foreign_issuer", 401),
        ("foreign_audience", 401),
        ("missing", 401),
    ],
)
async def test_callbacks_need_acs_jwt_when_acs_resource_id_is_set(jwt, status):
    issuer = AcsTokenIssuer()
    body = orjson.dumps([callback("CallConnected", "c-jwt")])
    token = CallTokens(KEY).issue("sales", "c-jwt", "callback")
    tokens = {
        "valid": issuer.token(RESOURCE),
        "expired": issuer.token(RESOURCE, issued=1_000_000, lifetime=60),
        "foreign_issuer": issuer.token(RESOURCE, issuer="https://login.example.com/"),
        "foreign_audience": issuer.token("some-other-resource"),
    }
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        control = plane(acs_resource_id=RESOURCE, auth_key_set_url=keys.url)
        async with served(control) as server:
            extra = [] if jwt == "missing" else ["{}: {}".format(*bearer(tokens[jwt]))]
            got, _, _ = await http(server, post(f"/callbacks?token={token}", body, *extra))
        nursery.cancel_scope.cancel()
    assert got == status
    if status == 200:
        assert control.stats.callbacks == {"CallConnected": 1}
    else:
        assert control.stats.callbacks == {}
        assert sum(n for r, n in control.stats.refused.items() if r.startswith("callback_jwt")) == 1


async def test_requests_between_replicas_need_the_shared_keys_signature():
    control = plane(replica_url="http://10.0.0.1:8080")
    events = {"op": "events", "c": "c-1", "events": [callback("CallDisconnected", "c-1")]}
    body = orjson.dumps(events)
    good = ReplicaKey(KEY).sign(REPLICA_PATH, body)
    stale = ReplicaKey(KEY, now=lambda: 1_000_000.0).sign(REPLICA_PATH, body)
    cases = {
        "good": good,
        "foreign": ReplicaKey(b"z" * 32).sign(REPLICA_PATH, body),
        "stale": stale,
        "other body": ReplicaKey(KEY).sign(REPLICA_PATH, body + b" "),
        "call token": CallTokens(KEY).issue("sales", "c-1", "callback"),
    }
    async with served(control) as server:
        got = {
            name: (await http(server, post(REPLICA_PATH, body, f"{SIGNATURE_HEADER}: {sig}")))[0]
            for name, sig in cases.items()
        }
    assert got == {"good": 200, "foreign": 403, "stale": 403, "other body": 403, "call token": 403}
    assert control.stats.refused["replica_signature"] == 4


async def test_a_replica_without_replica_url_serves_no_replica_requests():
    control = plane()
    body = b'{"op": "events", "c": "c-1", "events": []}'
    signature = ReplicaKey(KEY).sign(REPLICA_PATH, body)
    async with served(control) as server:
        status, _, _ = await http(
            server, post(REPLICA_PATH, body, f"{SIGNATURE_HEADER}: {signature}")
        )
    assert status == 404


async def test_media_on_another_replica_claims_the_call_at_its_home():
    home_answerer = FakeAnswerer()
    home = plane(home_answerer, replica_url="http://127.0.0.1:1")  # its URL as the others know it
    other = plane(replica_url="http://127.0.0.1:2")
    async with served(home) as a, served(other) as b:
        body = orjson.dumps([incoming("c-away", to="4:+18005550100", X_Team="a")])
        assert (await http(a, post(EG, body)))[0] == 200
        (request,) = home_answerer.requests
        assert urlsplit(request.transport_url).path == "/ws/sales"
        # the token as the home would sign it, naming the home's real address
        token = CallTokens(KEY).issue("sales", "c-away", "media", f"http://127.0.0.1:{a.port}")
        resource = f"/ws/sales?token={token}"
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with simulated_call(
                b.urls[0], resource=resource, correlation_id="c-away", connection_id="conn-x"
            ):
                pass
        assert refused.value.status_code == 403  # the home knows the call's connection id
        async with simulated_call(
            b.urls[0], resource=resource, correlation_id="c-away", connection_id="conn-1"
        ) as call:
            await call.stream(b"\x01\x00" * 320, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
            ((held),) = other.live.calls.values()
            assert held.control.incoming.callee == "4:+18005550100"  # told by the home
            assert held.control.incoming.sip_headers == {"X_Team": "a"}
        assert home.answering is not None
        assert home.answering.holder("c-away") == "http://127.0.0.1:2"
    assert other.stats.refused["media_other_call"] == 1
    assert other.replicas is not None
    assert other.replicas.forwards == {"media:403": 1, "media:ok": 1}
