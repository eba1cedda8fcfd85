"""The fake model's function calls: a scripted reply that calls a tool instead of speaking.

Owns: `FunctionCall` (a reply in `open_fake_model(responses=[...])`'s script, or what
`FakeModel.call_tool` sends; a tuple of them is one response calling several functions at once)
and the events of a response that calls functions, as the
Realtime API streams them (`response.created`, the `function_call` item added, its arguments,
`response.function_call_arguments.done`, `response.output_item.done`, `response.done`), in
either generation. Never: sockets or timing (the fake model sends what this returns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson


@attrs.frozen
class FunctionCall:
    """A reply in which the model calls the client's tool `name` with `arguments`."""

    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)


Reply = bytes | FunctionCall | tuple[FunctionCall, ...]  # audio, or calls made in one response


def function_call_events(
    calls: Sequence[tuple[FunctionCall, str, str]], response_id: str, ga: bool
) -> list[dict[str, Any]]:
    """One response calling functions (each with its item id and call id), event by event."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}
    ]
    done = []
    for index, (call, item_id, call_id) in enumerate(calls):
        arguments = orjson.dumps(dict(call.arguments)).decode()
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "completed",
            "name": call.name,
            "call_id": call_id,
            "arguments": arguments,
        }
        done.append(item)
        where = {"response_id": response_id, "item_id": item_id, "output_index": index}
        started = {**item, "status": "in_progress", "arguments": ""}
        events += [
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": index,
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
                "output_index": index,
                "item": item,
            },
        ]
    events.append(
        {
            "type": "response.done",
            "response": {"id": response_id, "status": "completed", "output": done},
        }
    )
    return events
