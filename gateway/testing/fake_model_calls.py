"""The fake model's function calls: a scripted reply that calls a tool instead of speaking.

Owns: `FunctionCall` (a reply in `open_fake_model(responses=[...])`'s script, or what
`FakeModel.call_tool` sends) and the events of a response that calls a function, as the
Realtime API streams them (`response.created`, the `function_call` item added, its arguments,
`response.function_call_arguments.done`, `response.output_item.done`, `response.done`), in
either generation. Never: sockets or timing (the fake model sends what this returns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson


@attrs.frozen
class FunctionCall:
    """A reply in which the model calls the client's tool `name` with `arguments`."""

    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)


def function_call_events(
    call: FunctionCall, response_id: str, item_id: str, call_id: str, ga: bool
) -> list[dict[str, Any]]:
    """One response calling one function, event by event."""
    arguments = orjson.dumps(dict(call.arguments)).decode()
    item = {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "name": call.name,
        "call_id": call_id,
        "arguments": arguments,
    }
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
    started = {**item, "status": "in_progress", "arguments": ""}
    return [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {
            "type": "response.output_item.added",
            "response_id": response_id,
            "output_index": 0,
            "item": started,
        },
        {
            "type": "conversation.item.added" if ga else "conversation.item.created",
            "item": started,
        },
        {"type": "response.function_call_arguments.delta", **where, "delta": arguments},
        {
            "type": "response.function_call_arguments.done",
            **where,
            "call_id": call_id,
            "name": call.name,
            "arguments": arguments,
        },
        {
            "type": "response.output_item.done",
            "response_id": response_id,
            "output_index": 0,
            "item": item,
        },
        {
            "type": "response.done",
            "response": {"id": response_id, "status": "completed", "output": [item]},
        },
    ]
