"""The fake ACS's REST API, against the real Call Automation SDK (sync client in a thread),
and its HMAC check against the SDK's own signing policy."""

from __future__ import annotations

import base64
import socket
import ssl
from email.utils import formatdate
from typing import Any

import httpx
import pytest
import trio

from gateway.testing import open_fake_acs
from gateway.testing.acs_hmac import refusal, sign

callautomation = pytest.importorskip("azure.communication.callautomation")
from azure.core.exceptions import HttpResponseError  # noqa: E402

KEY = base64.b64encode(b"k" * 32).decode()


def _sdk_headers(method: str, url: str, body: str) -> dict[str, str]:
    """What the SDK's HMAC policy puts on a request (the oracle for `sign`)."""
    from azure.communication.callautomation._shared.policy import HMACCredentialsPolicy
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest

    request = HttpRequest(method, url, content=body.encode() if body else None)
    request.body = body or None  # type: ignore[attr-defined]  # the policy reads the legacy .body
    policy = HMACCredentialsPolicy("https://127.0.0.1:4433", KEY)
    policy.on_request(PipelineRequest(request, PipelineContext(None)))  # type: ignore[arg-type]  # a bare request, no pipeline
    return {k.lower(): v for k, v in request.headers.items()}


def test_sign_matches_the_sdk_and_refusal_accepts_it():
    url = "https://127.0.0.1:4433/calling/callConnections:answer?api-version=2026-03-12"
    body = '{"incomingCallContext": "c"}'
    sdk = _sdk_headers("POST", url, body)
    target = "/calling/callConnections:answer?api-version=2026-03-12"
    ours = sign("POST", target, "127.0.0.1:4433", body.encode(), KEY, date=sdk["x-ms-date"])
    assert ours["authorization"] == sdk["authorization"]
    assert ours["x-ms-content-sha256"] == sdk["x-ms-content-sha256"]
    headers = {**sdk, "host": "127.0.0.1:4433"}
    assert refusal("POST", target, headers, body.encode(), KEY) is None


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda h, b, t: ({**h, "authorization": "Bearer x"}, b, t), "no HMAC-SHA256"),
        (lambda h, b, t: (h, b + b" ", t), "does not match the body"),
        (lambda h, b, t: ({**h, "host": "evil:1"}, b, t), "signature does not match"),
        (lambda h, b, t: ({**h, "x-ms-date": formatdate(0, usegmt=True)}, b, t), "does not match"),
        (lambda h, b, t: (h, b, t + "&x=1"), "signature does not match"),
        (lambda h, b, t: ({k: v for k, v in h.items() if k != "x-ms-date"}, b, t), "missing"),
        (
            lambda h, b, t: (
                {**h, "authorization": h["authorization"].replace("x-ms-date;", "")},
                b,
                t,
            ),
            "must include",
        ),
        (
            lambda h, b, t: (
                {**h, "authorization": h["authorization"].split("&")[0] + "&Signature=%%"},
                b,
                t,
            ),
            "not base64",
        ),
    ],
)
def test_refusal_names_what_is_wrong(change, reason):
    target, body = "/calling/callConnections/abc?api-version=1", b"{}"
    headers = {**sign("DELETE", target, "h:1", body, KEY), "host": "h:1"}
    assert refusal("DELETE", target, headers, body, KEY) is None
    headers, body, target = change(headers, body, target)
    why = refusal("DELETE", target, headers, body, KEY)
    assert why is not None and reason in why


def _client(acs: Any, key: str | None = None) -> Any:
    conn = acs.connection_string if key is None else f"endpoint={acs.endpoint}/;accesskey={key}"
    return callautomation.CallAutomationClient.from_connection_string(conn, **acs.sdk_options)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _media_options(url: str, start: bool = False) -> Any:
    return callautomation.MediaStreamingOptions(
        transport_url=url,
        transport_type=callautomation.StreamingTransportType.WEBSOCKET,
        content_type=callautomation.MediaStreamingContentType.AUDIO,
        audio_channel_type=callautomation.MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=start,
        enable_bidirectional=True,
        audio_format=callautomation.AudioFormat.PCM24_K_MONO,
    )


async def test_the_sdk_answers_reads_transfers_and_hangs_up():
    async with open_fake_acs() as acs:
        first, second = await acs.ring(), await acs.ring(caller="8:acs:someone")
        client = _client(acs)
        # Nothing listens there: callbacks and the media socket fail, on loopback.
        nowhere = f"127.0.0.1:{_closed_port()}"

        def answer(call: Any) -> Any:
            return client.answer_call(
                call.incoming_call_context,
                f"https://{nowhere}/callbacks/1",
                media_streaming=_media_options(f"wss://{nowhere}/ws"),
                operation_context="op1",
            )

        props = await trio.to_thread.run_sync(answer, first)
        assert props.call_connection_id == first.call_connection_id
        assert props.server_call_id == first.server_call_id
        assert first.state == "connected" and first.answered.is_set()
        # The body as ACS received it, field by field (wire names from the SDK's model).
        assert first.answer["incomingCallContext"] == first.incoming_call_context
        assert first.answer["callbackUri"] == f"https://{nowhere}/callbacks/1"
        assert first.answer["operationContext"] == "op1"
        assert first.media_options == {
            "transportType": "websocket",
            "audioChannelType": "mixed",
            "transportUrl": f"wss://{nowhere}/ws",
            "contentType": "audio",
            "startMediaStreaming": False,
            "enableBidirectional": True,
            "audioFormat": "pcm24KMono",
        }

        connection = client.get_call_connection(first.call_connection_id)
        got = await trio.to_thread.run_sync(connection.get_call_properties)
        assert got.call_connection_state == "connected"
        assert got.callback_url == f"https://{nowhere}/callbacks/1"

        # Starting streaming when the transport URL is unreachable: accepted, then failed.
        await trio.to_thread.run_sync(connection.start_media_streaming)
        with trio.fail_after(10):
            failed = await first.wait_for_callback("MediaStreamingFailed")
        assert failed.status is None and "ConnectError" in (failed.error or "")
        data = failed.body[0]["data"]
        assert data["resultInformation"]["subCode"] == 8581
        assert data["mediaStreamingUpdate"]["mediaStreamingStatusDetails"] == (
            "initialWebSocketConnectionFailed"
        )

        target = callautomation.PhoneNumberIdentifier("+18005550199")
        await trio.to_thread.run_sync(
            lambda: connection.transfer_call_to_participant(target, operation_context="xfer")
        )
        assert first.transfers[0]["targetParticipant"]["rawId"] == "4:+18005550199"
        with trio.fail_after(10):
            await first.disconnected.wait()
        assert first.callback_kinds()[-2:] == ["CallTransferAccepted", "CallDisconnected"]

        await trio.to_thread.run_sync(answer, second)
        other = client.get_call_connection(second.call_connection_id)
        await trio.to_thread.run_sync(lambda: other.hang_up(is_for_everyone=True))
        with trio.fail_after(10):
            await second.disconnected.wait()
        # A call that has ended is gone, as in ACS.
        with pytest.raises(HttpResponseError) as gone:
            await trio.to_thread.run_sync(lambda: other.hang_up(is_for_everyone=False))
        assert gone.value.status_code == 404
        ops = [
            (r.method, r.target.split("?")[0].rsplit("/", 1)[-1], r.status) for r in acs.requests
        ]
        assert ("POST", "callConnections:answer", 200) in ops
        assert ("POST", f"{first.call_connection_id}:transferToParticipant", 202) in ops
        assert ("POST", f"{second.call_connection_id}:terminate", 204) in ops
        assert all(r.refusal is None for r in acs.requests)


async def test_a_wrong_key_is_refused_with_401_and_changes_nothing():
    async with open_fake_acs() as acs:
        call = await acs.ring()
        client = _client(acs, key=base64.b64encode(b"x" * 32).decode())
        with pytest.raises(HttpResponseError) as refused:
            await trio.to_thread.run_sync(
                lambda: client.answer_call(call.incoming_call_context, "https://127.0.0.1:9/cb")
            )
        assert refused.value.status_code == 401
        assert call.state == "ringing" and call.answer is None
        assert acs.requests[-1].refusal == "the signature does not match"


async def test_unsigned_and_unknown_requests():
    async with open_fake_acs() as acs:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=acs.ca_path)) as http:
            unsigned = await http.delete(f"{acs.endpoint}/calling/callConnections/x?api-version=1")
            assert unsigned.status_code == 401
            assert unsigned.json()["error"]["code"] == "Denied"
            host = acs.endpoint.removeprefix("https://")
            for target, status in [
                ("/calling/callConnections/nope?api-version=1", 404),
                ("/calling/callConnections/nope", 400),  # no api-version
            ]:
                headers = sign("GET", target, host, b"", acs.access_key)
                reply = await http.get(acs.endpoint + target, headers=headers)
                assert reply.status_code == status, reply.text


async def test_refused_answers_leave_the_call_ringing():
    async with open_fake_acs() as acs:
        acs.answer_status = 403
        call = await acs.ring()
        client = _client(acs)
        with pytest.raises(HttpResponseError) as refused:
            await trio.to_thread.run_sync(
                lambda: client.answer_call(call.incoming_call_context, "https://127.0.0.1:9/cb")
            )
        assert refused.value.status_code == 403
        assert call.state == "ringing" and not call.callbacks
