"""Webhook bodies, parsed strictly: Event Grid deliveries (both schemas) and Call Automation
callbacks, into frozen values.

Owns: what a webhook body must look like, and `IncomingCall`, the part of ACS's event that
routing and answering read. Never: I/O, secrets, decisions (`gateway.control.plane`).

Event Grid posts a JSON array in its own schema (`eventType`, `data`), or CloudEvents 1.0
(`type`, `data`, `specversion`): one object, or an array in batch mode. Callbacks are a JSON
array of CloudEvents. Anything else raises `BadBody` with what was wrong (HTTP 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from .tokens import DIAL_PREFIX

INCOMING_CALL: Final = "Microsoft.Communication.IncomingCall"
SUBSCRIPTION_VALIDATION: Final = "Microsoft.EventGrid.SubscriptionValidationEvent"
MAX_EVENTS: Final = 100  # Event Grid batches hold at most 5000 by default; ACS sends one or few


class BadBody(Exception):
    """A webhook body that is not what Event Grid or ACS sends (HTTP 400)."""


@attrs.frozen
class Event:
    """One event of either schema: its type, id and `data` object."""

    type: str
    id: str
    data: Mapping[str, Any]


@attrs.frozen
class Identifier:
    """A CommunicationIdentifierModel: every name by which a route may match it."""

    raw_id: str
    names: frozenset[str]

    @classmethod
    def parse(cls, value: Any, field: str) -> Identifier:
        if not isinstance(value, dict) or not isinstance(value.get("rawId"), str):
            raise BadBody(f"IncomingCall data.{field} has no rawId")
        names = {value["rawId"]}
        for kind, key in (("phoneNumber", "value"), ("communicationUser", "id")):
            inner = value.get(kind)
            if isinstance(inner, dict) and isinstance(inner.get(key), str):
                names.add(inner[key])
        return cls(value["rawId"], frozenset(names))


@attrs.frozen
class IncomingCall:
    """What routing and answering need from a `Microsoft.Communication.IncomingCall`."""

    callee: Identifier
    caller: Identifier
    incoming_call_context: str = attrs.field(repr=False)  # opaque; answers the call
    correlation_id: str
    server_call_id: str
    headers: Mapping[str, str]  # customContext SIP and VoIP headers, names lower-cased

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> IncomingCall:
        context, correlation = data.get("incomingCallContext"), data.get("correlationId")
        if not isinstance(context, str) or not context:
            raise BadBody("IncomingCall data has no incomingCallContext")
        if not isinstance(correlation, str) or not correlation:
            raise BadBody("IncomingCall data has no correlationId")
        if correlation.startswith(DIAL_PREFIX):  # the tokens of calls we place say this
            raise BadBody("IncomingCall correlationId is not ACS's")
        headers: dict[str, str] = {}
        custom = data.get("customContext") or {}
        for group in ("sipHeaders", "voipHeaders"):
            values = custom.get(group) if isinstance(custom, dict) else None
            for name, value in (values or {}).items():
                if isinstance(value, str):
                    headers[str(name).lower()] = value
        return cls(
            Identifier.parse(data.get("to"), "to"),
            Identifier.parse(data.get("from"), "from"),
            context,
            correlation,
            str(data.get("serverCallId", "")),
            headers,
        )


def parse_events(body: bytes) -> list[Event]:
    """The events of an Event Grid or callback body, either schema; raises `BadBody`."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody(f"not JSON ({exc})") from None
    items = document if isinstance(document, list) else [document]
    if not items or len(items) > MAX_EVENTS:
        raise BadBody(f"expected 1 to {MAX_EVENTS} events, got {len(items)}")
    return [_event(item, i) for i, item in enumerate(items)]


def _event(item: Any, index: int) -> Event:
    if not isinstance(item, dict):
        raise BadBody(f"event {index} is not an object")
    kind = item.get("type") if "specversion" in item else item.get("eventType")
    data = item.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        raise BadBody(f"event {index} has no type or no data object")
    return Event(kind, str(item.get("id", "")), data)
