"""The JSON ACS and Event Grid post to an application: IncomingCall and the subscription
validation (Event Grid schema), and Call Automation callbacks (an array of CloudEvents 1.0).

Owns: building those payloads with ACS's field names (docs/testing.md, "A fake ACS control
plane"). Never sends anything.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any

EVENT_PREFIX = "Microsoft.Communication."
INCOMING_CALL = "Microsoft.Communication.IncomingCall"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/test/providers/"
    "Microsoft.Communication/communicationServices/fake-acs"
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def identifier(raw_id: str) -> dict[str, Any]:
    """A CommunicationIdentifierModel for a raw id: `4:+1...` or `+1...` (a phone number),
    `8:acs:...` (an ACS user), anything else `unknown`."""
    if raw_id.startswith("+"):
        raw_id = "4:" + raw_id
    if raw_id.startswith("4:"):
        return {"kind": "phoneNumber", "rawId": raw_id, "phoneNumber": {"value": raw_id[2:]}}
    if raw_id.startswith("8:acs:"):
        return {"kind": "communicationUser", "rawId": raw_id, "communicationUser": {"id": raw_id}}
    return {"kind": "unknown", "rawId": raw_id}


def validation_event(code: str, validation_url: str) -> list[dict[str, Any]]:
    """Event Grid's subscription validation request body."""
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": TOPIC,
            "subject": "",
            "data": {"validationCode": code, "validationUrl": validation_url},
            "eventType": SUBSCRIPTION_VALIDATION,
            "eventTime": _now(),
            "metadataVersion": "1",
            "dataVersion": "1",
        }
    ]


def incoming_call_event(
    *,
    to: str,
    caller: str,
    incoming_call_context: str,
    server_call_id: str,
    correlation_id: str,
    caller_display_name: str = "",
    sip_headers: Mapping[str, str] | None = None,
    voip_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One `Microsoft.Communication.IncomingCall` event (Event Grid schema)."""
    to_id, from_id = identifier(to), identifier(caller)
    return {
        "id": str(uuid.uuid4()),
        "topic": TOPIC,
        "subject": f"/caller/{from_id['rawId']}/recipient/{to_id['rawId']}",
        "data": {
            "to": to_id,
            "from": from_id,
            "serverCallId": server_call_id,
            "callerDisplayName": caller_display_name,
            "customContext": {
                "sipHeaders": dict(sip_headers or {}),
                "voipHeaders": dict(voip_headers or {}),
            },
            "incomingCallContext": incoming_call_context,
            "correlationId": correlation_id,
        },
        "eventType": INCOMING_CALL,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": _now(),
    }


def callback_event(
    kind: str,
    *,
    call_connection_id: str,
    server_call_id: str,
    correlation_id: str,
    operation_context: str | None = None,
    result: tuple[int, int, str] | None = None,
    **data: Any,
) -> dict[str, Any]:
    """One Call Automation callback (CloudEvents 1.0); `kind` without the `Microsoft.Communication.`
    prefix (`CallConnected`), `result` as (code, subCode, message), `data` added as given."""
    source = f"calling/callConnections/{call_connection_id}"
    body: dict[str, Any] = {
        "callConnectionId": call_connection_id,
        "serverCallId": server_call_id,
        "correlationId": correlation_id,
        **data,
    }
    if operation_context is not None:
        body["operationContext"] = operation_context
    if result is not None:
        code, sub_code, message = result
        body["resultInformation"] = {"code": code, "subCode": sub_code, "message": message}
    return {
        "id": str(uuid.uuid4()),
        "source": source,
        "type": EVENT_PREFIX + kind,
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "time": _now(),
        "subject": source,
        "data": body,
    }


def streaming_update(status: str, details: str) -> dict[str, str]:
    """`data.mediaStreamingUpdate` of the MediaStreaming* callbacks."""
    return {
        "contentType": "Audio",
        "mediaStreamingStatus": status,
        "mediaStreamingStatusDetails": details,
    }
