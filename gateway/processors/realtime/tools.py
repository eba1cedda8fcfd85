"""Call-control tools for the model: `end_call` and `transfer_call`.

Owns: what the model is offered (function tools in the session, only when the call has a
control handle and the route's options enable them: `call_tools`, with `transfer_targets`
naming where a transfer may go) and what a tool call does (the model's goodbye is let play out,
then `call.control.hang_up()` or `transfer(target)`; the model gets the result as the call's
function output). Never: a target the route does not list (the model picks a name; the number
stays in the configuration), sockets or the model's protocol spelling (`protocol`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import trio

from ...call.interface import Call

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
TOOLS: Final = (END_CALL, TRANSFER_CALL)
GOODBYE_TIMEOUT: Final = 10.0  # seconds the model's last words may take to play before hang-up


def check(call_tools: Sequence[str], transfer_targets: Mapping[str, str]) -> None:
    """Raise ValueError naming the bad option."""
    unknown = sorted(set(call_tools) - set(TOOLS))
    if unknown:
        raise ValueError(f"call_tools: unknown {unknown}; the tools are {', '.join(TOOLS)}")
    if TRANSFER_CALL in call_tools and not transfer_targets:
        raise ValueError("call_tools has transfer_call: list where in transfer_targets")
    for name, target in transfer_targets.items():
        if not isinstance(target, str) or not target:
            raise ValueError(f"transfer_targets.{name}: a phone number or an ACS user id")


def definitions(call_tools: Sequence[str], transfer_targets: Mapping[str, str]) -> list[Any]:
    """The function tools for the session (the same shape in both protocol generations)."""
    tools: list[Any] = []
    if END_CALL in call_tools:
        tools.append(
            {
                "type": "function",
                "name": END_CALL,
                "description": "Hang up the phone call, after saying goodbye.",
                "parameters": {"type": "object", "properties": {}},
            }
        )
    if TRANSFER_CALL in call_tools:
        tools.append(
            {
                "type": "function",
                "name": TRANSFER_CALL,
                "description": "Transfer the caller to a person or team; the call then leaves you.",
                "parameters": {
                    "type": "object",
                    "properties": {"target": {"type": "string", "enum": sorted(transfer_targets)}},
                    "required": ["target"],
                },
            }
        )
    return tools


def session_extra(
    call: Call, call_tools: Sequence[str], transfer_targets: Mapping[str, str]
) -> dict[str, Any]:
    """What the session adds for this call: nothing without a control handle or tools."""
    if call.control is None or not call_tools:
        return {}
    return {"tools": definitions(call_tools, transfer_targets), "tool_choice": "auto"}


async def run(call: Call, name: str, arguments: str, transfer_targets: Mapping[str, str]) -> str:
    """Do what the model asked; the function output it gets (JSON)."""
    control = call.control
    if control is None or name not in TOOLS:
        return _output(False, f"no tool {name!r} on this call")
    target = None
    if name == TRANSFER_CALL:
        try:
            wanted = orjson.loads(arguments or "{}").get("target")
        except (orjson.JSONDecodeError, AttributeError):
            wanted = None
        target = transfer_targets.get(wanted) if isinstance(wanted, str) else None
        if target is None:
            return _output(False, f"unknown target; choose one of {sorted(transfer_targets)}")
    if call.player is not None:
        with trio.move_on_after(GOODBYE_TIMEOUT):
            await call.player.drain()
    try:
        if target is None:
            await control.hang_up()
        else:
            await control.transfer(target)
    except Exception as exc:  # noqa: BLE001  (CallControlError, ValueError: the model is told)
        call.log.warning("%s asked by the model failed: %s", name, exc)
        return _output(False, str(exc))
    call.log.info("%s done at the model's request", name)
    return _output(True, "done")


def _output(ok: bool, detail: str) -> str:
    return orjson.dumps({"ok": ok, "detail": detail}).decode()
