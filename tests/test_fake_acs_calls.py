"""Whole calls through the fake ACS: Event Grid validation, IncomingCall, an answer through the
real SDK, callbacks with ACS-style tokens, and the media socket to a real gateway (echo)."""

from __future__ import annotations

import socket
import ssl

import httpx
import jwt
import pytest
import trio

from gateway.testing import (
    AcsTokenIssuer,
    FakeAcsError,
    open_fake_acs,
    open_gateway,
    serve_key_set,
    speech,
)
from gateway.testing.acs_hmac import sign
from gateway.testing.fake_acs import RESOURCE_ID
from gateway.testing.http_server import HttpResponse, serve_http
from tests.acs_app import open_app

pytest.importorskip("azure.communication.callautomation")

HALF_SECOND = speech(16000)[:16000]


async def test_a_call_rings_is_answered_streams_echo_and_the_caller_hangs_up():
    issuer = AcsTokenIssuer()
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        settings = {"acs_resource_id": RESOURCE_ID, "auth_key_set_url": keys.url}
        async with open_gateway("echo", **settings) as gateway, open_fake_acs(issuer=issuer) as acs:
            async with open_app(acs, gateway.urls[0]) as app:
                assert app.validations == 1
                call = await acs.ring(sip_headers={"X-Team": "sales"})
                assert call.delivery is not None and call.delivery.status == 200
                data = app.incoming[0]["data"]
                assert data["from"]["phoneNumber"]["value"] == "+14255550123"
                assert data["customContext"]["sipHeaders"] == {"X-Team": "sales"}
                with trio.fail_after(10):
                    await call.media_connected.wait()
                    await call.wait_for_callback("MediaStreamingStarted")
                assert (
                    call.media is not None and call.media.connection_id == call.call_connection_id
                )
                await call.media.stream(HALF_SECOND)
                with trio.fail_after(5):
                    await call.media.wait_for_audio(len(HALF_SECOND))
                assert call.media.received_pcm == HALF_SECOND

                await acs.hang_up(call)
                with trio.fail_after(5):
                    await call.media.closed.wait()
                assert call.disconnected.is_set()
                assert app.callback_types() == [
                    "CallConnected",
                    "MediaStreamingStarted",
                    "CallDisconnected",
                ]
                for authorization, event in app.callbacks:
                    assert authorization is not None
                    claims = jwt.decode(
                        authorization.removeprefix("Bearer "),
                        issuer.private_keys[issuer.key_id].public_key(),
                        algorithms=["RS256"],
                        audience=RESOURCE_ID,
                    )
                    assert claims["exp"] - claims["iat"] == 300
                    assert event["data"]["callConnectionId"] == call.call_connection_id
                    assert event["specversion"] == "1.0"
        nursery.cancel_scope.cancel()


async def test_streaming_fails_with_8581_when_the_transport_url_is_not_a_gateway():
    async with open_fake_acs() as acs:
        async with open_app(acs, f"ws://127.0.0.1:{_closed_port()}/ws") as app:
            call = await acs.ring()
            with trio.fail_after(10):
                failed = await call.wait_for_callback("MediaStreamingFailed")
            assert failed.status == 200
            info = failed.body[0]["data"]["resultInformation"]
            assert (info["code"], info["subCode"]) == (400, 8581)
            assert app.callback_types() == ["CallConnected", "MediaStreamingFailed"]
            assert call.media is None


async def test_fail_streaming_and_dropped_callbacks():
    async with open_gateway("echo") as gateway, open_fake_acs() as acs:
        async with open_app(acs, gateway.urls[0]) as app:
            acs.fail_streaming = True
            call = await acs.ring()
            with trio.fail_after(10):
                await call.wait_for_callback("MediaStreamingFailed")
            assert gateway.stats.calls_accepted == 0  # ACS never connected
            acs.drop_callbacks = True
            await acs.hang_up(call)
            assert call.callback_kinds() == [
                "CallConnected",
                "MediaStreamingFailed",
                "CallDisconnected",
            ]
            assert call.callbacks[-1].error == "dropped"
            assert app.callback_types() == ["CallConnected", "MediaStreamingFailed"]


async def test_answering_without_streaming_then_starting_and_stopping_it():
    async with open_gateway("echo") as gateway, open_fake_acs() as acs:
        async with open_app(acs, gateway.urls[0], start=False):
            call = await acs.ring()
            with trio.fail_after(10):
                await call.wait_for_callback("CallConnected")
            assert call.media is None
            await _rest(acs, "POST", f"{call.call_connection_id}:startMediaStreaming", 202)
            with trio.fail_after(10):
                await call.media_connected.wait()
            media = call.media
            assert media is not None
            await _rest(acs, "POST", f"{call.call_connection_id}:stopMediaStreaming", 202)
            with trio.fail_after(10):
                await call.wait_for_callback("MediaStreamingStopped")
                await media.closed.wait()
            assert call.state == "connected"


async def test_a_webhook_that_fails_validation_is_not_subscribed():
    async def wrong(request):
        return HttpResponse(200, b'{"validationResponse": "not-the-code"}')

    async with open_fake_acs() as acs, trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, wrong)
        with pytest.raises(FakeAcsError, match="does not echo"):
            await acs.subscribe(server.url + "/events")
        assert acs.subscriptions == []
        nursery.cancel_scope.cancel()


async def _rest(acs, method: str, operation: str, status: int) -> None:
    target = f"/calling/callConnections/{operation}?api-version=2026-03-12"
    host = acs.endpoint.removeprefix("https://")
    verify = ssl.create_default_context(cafile=acs.ca_path)
    async with httpx.AsyncClient(verify=verify) as http:
        headers = sign(method, target, host, b"{}", acs.access_key)
        reply = await http.request(method, acs.endpoint + target, content=b"{}", headers=headers)
    assert reply.status_code == status, reply.text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
