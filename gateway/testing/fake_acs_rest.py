"""The fake ACS's Call Automation REST API: the requests the gateway's SDK client sends.

Owns: routing `/calling/callConnections...` requests, refusing a bad HMAC signature with 401
and a missing `api-version` with 400 before anything else, and answering with ACS's status
codes and JSON (`CallConnectionProperties`, `CommunicationErrorResponse`). What a request
sets in motion (callbacks, the media socket) runs in the fake's nursery, never in the handler.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio

from . import acs_events
from .acs_hmac import refusal
from .fake_acs import FakeAcs, FakeCall, RestRequest
from .fake_acs_dial import create_call
from .http_server import Handler, HttpRequest, HttpResponse

ANSWER = re.compile(r"^/calling/callConnections:answer$")
CREATE = "/calling/callConnections"
CONNECTION = re.compile(r"^/calling/callConnections/(?P<id>[^/:]+)(?::(?P<action>\w+))?$")


def _error(status: int, code: str, message: str) -> HttpResponse:
    body = {"error": {"code": code, "message": message}}
    return HttpResponse(status, orjson.dumps(body))


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(body))


def properties(call: FakeCall) -> dict[str, Any]:
    """The call's `CallConnectionProperties`."""
    options = call.media_options
    if not options:
        streaming = "disabled"
    else:
        streaming = (
            "active" if call.media is not None and not call.stop_media.is_set() else "inactive"
        )
    state = {"ringing": "connecting"}.get(call.state, call.state)
    ours, theirs = (call.to, call.caller) if call.direction == "inbound" else (call.caller, call.to)
    return {
        "callConnectionId": call.call_connection_id,
        "serverCallId": call.server_call_id,
        "targets": [acs_events.identifier(theirs)],
        "callConnectionState": state,
        "callbackUri": call.callback_uri,
        "source": acs_events.identifier(ours),
        "correlationId": call.correlation_id,
        "mediaStreamingSubscription": {
            "id": call.call_connection_id,
            "state": streaming,
            "subscribedContentTypes": ["audio"],
        },
    }


def handler(acs: FakeAcs) -> Handler:
    async def handle(request: HttpRequest) -> HttpResponse:
        if acs.rest_delay:
            await trio.sleep(acs.rest_delay)
        why = refusal(request.method, request.target, request.headers, request.body, acs.access_key)
        response = _route(acs, request, why)
        acs.requests.append(RestRequest(request.method, request.target, response.status, why))
        return response

    return handle


def _route(acs: FakeAcs, request: HttpRequest, why: str | None) -> HttpResponse:
    if why is not None:
        return _error(401, "Denied", f"Denied by the authentication policy: {why}")
    url = urlsplit(request.target)
    if not parse_qs(url.query).get("api-version"):
        return _error(
            400, "MissingApiVersionParameter", "The api-version query parameter is required."
        )
    try:
        body = orjson.loads(request.body) if request.body else {}
    except orjson.JSONDecodeError:
        return _error(400, "BadRequest", "The request body is not JSON.")
    if not isinstance(body, dict):
        return _error(400, "BadRequest", "The request body must be a JSON object.")
    if request.method == "POST" and ANSWER.match(url.path):
        return _answer(acs, body)
    if request.method == "POST" and url.path == CREATE:
        return _json(*create_call(acs, body))
    match = CONNECTION.match(url.path)
    if match is None:
        return _error(404, "NotFound", f"No such operation: {request.method} {url.path}")
    call = acs.calls.get(match["id"])
    if call is None or (call.state == "ringing" and call.direction == "inbound"):
        return _error(404, "8522", "Call not found.")
    action = (request.method, match["action"])
    if action == ("GET", None):
        return _json(200, properties(call))
    if call.state == "disconnected":
        return _error(404, "8522", "Call not found.")
    context = body.get("operationContext")
    if action in (("DELETE", None), ("POST", "terminate")):
        acs.nursery.start_soon(acs.disconnect, call)
        return HttpResponse(204, b"", ())
    if action == ("POST", "transferToParticipant"):
        call.transfers.append(body)
        acs.nursery.start_soon(_transfer, acs, call, body)
        return _json(202, {"operationContext": context})
    if action == ("POST", "startMediaStreaming"):
        if call.media is None or call.stop_media.is_set():
            acs.nursery.start_soon(acs.run_media, call)
        return HttpResponse(202, b"", ())
    if action == ("POST", "stopMediaStreaming"):
        call.stop_media.set()
        return HttpResponse(202, b"", ())
    return _error(404, "NotFound", f"No such operation: {request.method} {url.path}")


def _answer(acs: FakeAcs, body: dict[str, Any]) -> HttpResponse:
    context = body.get("incomingCallContext")
    call = next((c for c in acs.calls.values() if c.incoming_call_context == context), None)
    if call is None:
        return _error(400, "BadRequest", "incomingCallContext is not a call that rang.")
    if not str(body.get("callbackUri", "")).startswith(("https://", "http://")):
        return _error(400, "BadRequest", "callbackUri must be an http(s):// URL.")
    if call.state != "ringing":
        return _error(400, "BadRequest", "The call was already answered or has ended.")
    if acs.answer_status != 200:
        return _error(acs.answer_status, "AnswerRefused", "The fake ACS refuses answers.")
    call.answer = body
    call.state = "connected"
    call.answered_at = trio.current_time()
    call.answered.set()
    acs.nursery.start_soon(connected, acs, call)
    return _json(200, properties(call))


async def connected(acs: FakeAcs, call: FakeCall) -> None:
    """The call is up: CallConnected, then its media WebSocket if streaming starts with it."""
    await acs.callback(
        call, "CallConnected", operation_context=(call.answer or {}).get("operationContext")
    )
    if call.media_options.get("startMediaStreaming") and call.state == "connected":
        await acs.run_media(call)


async def _transfer(acs: FakeAcs, call: FakeCall, body: dict[str, Any]) -> None:
    target = body.get("targetParticipant") or {}
    await acs.callback(
        call,
        "CallTransferAccepted",
        operation_context=body.get("operationContext"),
        result=(202, 0, "The transfer was accepted."),
        transferTarget=target,
        transferee=acs_events.identifier(call.caller),
    )
    await acs.disconnect(call)
