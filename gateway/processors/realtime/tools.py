"""The tools a route offers the model, and running one: the user's functions and call control.

Owns: the `Toolbox` built once at start from the options: the user's tools (`tools`, each
`module:function`, imported and described at start, so a missing or unusable one is a
configuration error) and the call-control tools `end_call` and `transfer_call` (`call_tools`;
offered only when the call has a control handle, with `transfer_targets` naming where a
transfer may go); what a call's session is offered; and running one tool call to its output
(JSON for the model). A user's tool runs with a deadline (`tool_timeout_ms`; a synchronous one
in a worker thread, abandoned at the deadline); its exception, a timeout or arguments that do
not fit become an error result for the model, never an exception in the call. For `end_call`
and `transfer_call` the model's goodbye is let play out, then `call.control.hang_up()` or
`transfer(target)`. Never: a transfer target the route does not list (the model picks a name;
the number stays in the configuration), sockets or the model's protocol spelling
(`protocol`), or the per-call bookkeeping of calls in flight (`tool_calls`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import orjson
import trio

from ...call.interface import Call
from .tool_schema import FunctionTool, ToolArgumentError, describe, output

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
TOOLS: Final = (END_CALL, TRANSFER_CALL)  # the call-control tools
GOODBYE_TIMEOUT: Final = 10.0  # seconds the model's last words may take to play before hang-up
# Worker threads for synchronous tools, apart from Trio's default pool: a tool stuck past its
# deadline keeps its thread, and must not starve the gateway's own thread work.
TOOL_THREADS: Final = 32
_THREADS: Final = trio.lowlevel.RunVar[trio.CapacityLimiter]("realtime_tool_threads")


@attrs.frozen
class Result:
    """One tool call's end: the output the model gets, and how it went (`ok`, `error`,
    `timeout`)."""

    output: str
    outcome: str


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


def load_function(path: str) -> FunctionTool:
    """Import `module:function` (dots after the colon reach into classes) and describe it."""
    where = f"tools: {path!r}"
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{where} is not 'module:function'")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (the user's module may fail in any way)
        raise ValueError(f"{where}: cannot import {module_name!r} ({exc!r})") from None
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise ValueError(f"{where}: {module_name!r} has no {attribute!r}") from None
    if not callable(found) or inspect.isclass(found):
        raise ValueError(f"{where} is not a function (got {type(found).__name__})")
    return describe(found, where, default_name=attribute.rpartition(".")[2])


@attrs.frozen
class Toolbox:
    """What one route's calls may be offered, built once from the options (`from_options`)."""

    functions: Mapping[str, FunctionTool] = attrs.field(factory=dict)
    call_tools: Sequence[str] = ()
    transfer_targets: Mapping[str, str] = attrs.field(factory=dict)
    timeout: float = 10.0  # seconds a user's tool may take

    @classmethod
    def from_options(
        cls,
        tools: Sequence[str],
        call_tools: Sequence[str],
        transfer_targets: Mapping[str, str],
        timeout_ms: int,
    ) -> Toolbox:
        """Import and describe the user's tools; ValueError naming a bad one."""
        check(call_tools, transfer_targets)
        functions: dict[str, FunctionTool] = {}
        for path in tools:
            if not isinstance(path, str):
                raise ValueError(f"tools: {path!r} is not a 'module:function' string")
            function = load_function(path)
            if function.name in functions or function.name in TOOLS:
                raise ValueError(f"tools: two tools are called {function.name!r}")
            functions[function.name] = function
        return cls(functions, tuple(call_tools), dict(transfer_targets), timeout_ms / 1000)

    def names(self, call: Call) -> frozenset[str]:
        """The tools this call's model may call."""
        control = self.call_tools if call.control is not None else ()
        return frozenset((*self.functions, *control))

    def session_extra(self, call: Call) -> dict[str, Any]:
        """What the session adds for this call (nothing when it offers no tool)."""
        definitions = [f.definition() for f in self.functions.values()]
        if call.control is not None:
            definitions += _control_definitions(self.call_tools, self.transfer_targets)
        if not definitions:
            return {}
        return {"tools": definitions, "tool_choice": "auto"}

    async def run(self, call: Call, name: str, arguments: str) -> Result:
        """Do what the model asked; never raises for the tool's own failures."""
        if name not in self.names(call):
            return Result(_error(f"there is no tool {name!r} on this call"), "error")
        function = self.functions.get(name)
        if function is None:
            return await _run_control(call, name, arguments, self.transfer_targets)
        try:
            kwargs = function.arguments(arguments, call)
        except ToolArgumentError as exc:
            return Result(_error(f"bad arguments: {exc}"), "error")
        with trio.move_on_after(self.timeout):
            try:
                if function.is_async:
                    result = await function.function(**kwargs)
                else:
                    result = await trio.to_thread.run_sync(
                        functools.partial(function.function, **kwargs),
                        abandon_on_cancel=True,
                        limiter=_thread_limiter(),
                    )
                return Result(output(result), "ok")
            except Exception as exc:  # noqa: BLE001  (the model is told; the call goes on)
                call.log.warning("tool %s failed", name, exc_info=True)
                return Result(_error(f"{type(exc).__name__}: {exc}"), "error")
        call.log.warning("tool %s gave no result within %g s", name, self.timeout)
        return Result(_error(f"no result within {self.timeout:g} s"), "timeout")


def _thread_limiter() -> trio.CapacityLimiter:
    try:
        return _THREADS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(TOOL_THREADS)
        _THREADS.set(limiter)
        return limiter


def _control_definitions(
    call_tools: Sequence[str], transfer_targets: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The call-control function tools (the same shape in both protocol generations)."""
    tools: list[dict[str, Any]] = []
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


async def _run_control(
    call: Call, name: str, arguments: str, transfer_targets: Mapping[str, str]
) -> Result:
    control = call.control
    assert control is not None  # offered only with a control handle
    target = None
    if name == TRANSFER_CALL:
        try:
            wanted = orjson.loads(arguments or "{}").get("target")
        except (orjson.JSONDecodeError, AttributeError):
            wanted = None
        target = transfer_targets.get(wanted) if isinstance(wanted, str) else None
        if target is None:
            return Result(
                _control_output(False, f"unknown target; choose one of {sorted(transfer_targets)}"),
                "error",
            )
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
        return Result(_control_output(False, str(exc)), "error")
    call.log.info("%s done at the model's request", name)
    return Result(_control_output(True, "done"), "ok")


def _control_output(ok: bool, detail: str) -> str:
    return orjson.dumps({"ok": ok, "detail": detail}).decode()


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()
