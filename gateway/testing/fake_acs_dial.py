"""The fake ACS's createCall (`POST /calling/callConnections`): a call the application places.

Owns: checking a createCall body as ACS does (one target, a phone number or an ACS user; a
caller id for a phone target; an http(s) `callbackUri`), the `FakeCall` it makes (`direction`
"outbound", the body kept as its `answer`: the callback URI and the media options), and the
call's life after the 201: it rings `acs.ring_seconds`, the callee picks up, CallConnected goes
to the callback URI and, with `startMediaStreaming`, the media WebSocket opens, as for a call
answered. `acs.dial_status` refuses the request instead. Never: checks signatures (the REST
handler did) or blocks the handler (the call's life runs in the fake's nursery).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

import trio

from .fake_acs import FakeAcs, FakeCall


def create_call(acs: FakeAcs, body: dict[str, Any]) -> tuple[int, Any]:
    """The status and JSON reply to a createCall body; a 201 starts the call's life."""
    from .fake_acs_rest import properties  # the handlers import this module

    targets = body.get("targets")
    if not isinstance(targets, list) or len(targets) != 1 or not isinstance(targets[0], dict):
        return 400, _error("BadRequest", "targets must hold one participant.")
    target = targets[0].get("rawId")
    if not isinstance(target, str) or not target.startswith(("4:+", "8:acs:")):
        return 400, _error("BadRequest", "The target is not a phone number or an ACS user.")
    source = body.get("sourceCallerIdNumber") or {}
    caller = source.get("value") if isinstance(source, dict) else None
    if target.startswith("4:") and not isinstance(caller, str):
        return 400, _error("BadRequest", "Calling a phone number needs sourceCallerIdNumber.")
    if not str(body.get("callbackUri", "")).startswith(("https://", "http://")):
        return 400, _error("BadRequest", "callbackUri must be an http(s):// URL.")
    if acs.dial_status != 201:
        return acs.dial_status, _error("CreateCallRefused", "The fake ACS refuses calls.")
    call = FakeCall(
        to=target,
        caller=caller if isinstance(caller, str) else "8:acs:fake-acs-application",
        call_connection_id=str(uuid.uuid4()),
        server_call_id=base64.urlsafe_b64encode(secrets.token_bytes(24)).decode(),
        correlation_id=str(uuid.uuid4()),
        incoming_call_context="",
        event={},
        answer=body,
        direction="outbound",
    )
    call.rung_at = trio.current_time()
    acs.calls[call.call_connection_id] = call
    acs.nursery.start_soon(_ring, acs, call)
    return 201, properties(call)


async def _ring(acs: FakeAcs, call: FakeCall) -> None:
    from .fake_acs_rest import connected

    await trio.sleep(acs.ring_seconds)
    if call.state != "ringing":  # hung up while it rang
        return
    call.state = "connected"
    call.answered_at = trio.current_time()
    call.answered.set()
    await connected(acs, call)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
