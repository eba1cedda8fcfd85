"""A Python callable as a model's function tool: its JSON schema, its arguments, its result.

Owns: the `tool` decorator; the JSON schema derived from a function's type hints (str, int,
float, bool, Literal, Enum, Optional, unions, list/tuple/set, dict[str, X], Annotated[X, "what
it is"], attrs classes and dataclasses) and its docstring (the summary is the tool's
description; a Google-style `Args:` section describes the parameters); turning the model's JSON
arguments into Python values (cattrs), and the return value into the output the model reads.
A parameter annotated as `Call` (or `Call | None`) gets the call itself and is not shown to the
model.
Never: runs the tool (`tools`), imports user modules, or knows the model's wire spelling.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs
import orjson
from cattrs.strategies import configure_union_passthrough

from ...call.interface import Call

TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the Realtime API accepts
_SCALARS: Final[dict[Any, str]] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_CONVERTER: Final = cattrs.Converter(forbid_extra_keys=True)
# unions of JSON's own scalars (`float | int`, `str | None`) take the value as the model sent it
configure_union_passthrough(str | int | float | bool | None, _CONVERTER)
_ARGS_SECTION: Final = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.M)


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool (told to the model, never raised to the call)."""


@attrs.frozen
class ToolInfo:
    """What `@tool(...)` says about a function, overriding what is derived."""

    name: str | None = None
    description: str | None = None
    parameters: Mapping[str, Any] | None = None  # an explicit JSON schema: arguments as given


@attrs.frozen
class FunctionTool:
    """A callable ready to offer: its definition for the session, and how to call it."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    is_async: bool
    hints: dict[str, Any] | None  # parameter -> type, to structure arguments (None: as given)
    call_parameter: str | None  # the parameter that receives the Call

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }

    def arguments(self, text: str, call: Call) -> dict[str, Any]:
        """The keyword arguments for this call of the tool; ToolArgumentError if they do not fit."""
        try:
            given = orjson.loads(text or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolArgumentError(f"arguments are not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ToolArgumentError("arguments must be a JSON object")
        kwargs: dict[str, Any] = dict(given)
        if self.hints is not None:
            unknown = sorted(set(given) - set(self.hints))
            if unknown:
                raise ToolArgumentError(f"unknown argument(s) {unknown}")
            missing = [p for p in self.parameters.get("required", ()) if p not in given]
            if missing:
                raise ToolArgumentError(f"missing argument(s) {missing}")
            for name, value in given.items():
                try:
                    kwargs[name] = _CONVERTER.structure(value, self.hints[name])
                except Exception as exc:  # noqa: BLE001  (any cattrs failure is the model's)
                    raise ToolArgumentError(f"{name}: {_reason(exc)}") from None
        if self.call_parameter is not None:
            kwargs[self.call_parameter] = call
        return kwargs


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """Mark a function as a tool, optionally naming it, describing it, or giving its JSON schema
    (`@tool`, or `@tool(name=..., description=..., parameters={...})`). Optional: a plain
    function with type hints is a tool as it is."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__realtime_tool__ = ToolInfo(name, description, parameters)  # type: ignore[attr-defined]  # a marker read by describe()
        return fn

    return mark if function is None else mark(function)


def describe(function: Callable[..., Any], where: str, default_name: str = "") -> FunctionTool:
    """The tool `function` makes; ValueError (naming `where`) if it cannot be offered."""
    info = getattr(function, "__realtime_tool__", None) or ToolInfo()
    name = info.name or getattr(function, "__name__", None) or default_name
    if not TOOL_NAME.match(name):
        raise ValueError(f"{where}: tool name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")
    summary, documented = _docstring(inspect.getdoc(function) or "")
    description = info.description if info.description is not None else summary
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ValueError(f"{where}: cannot read its signature ({exc})") from None
    call_parameter = None
    properties: dict[str, Any] = {}
    required: list[str] = []
    types_of: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(param.name)
        if hint is Call or hint == Call | None:
            call_parameter = param.name
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise ValueError(f"{where}: parameter {param.name!r} is positional-only")
        if info.parameters is not None:
            continue
        if hint is None:
            raise ValueError(f"{where}: parameter {param.name!r} needs a type hint")
        try:
            schema = schema_of(hint)
        except (TypeError, NameError) as exc:
            raise ValueError(f"{where}: parameter {param.name!r}: {exc}") from None
        if param.name in documented and "description" not in schema:
            schema["description"] = documented[param.name]
        properties[param.name] = schema
        types_of[param.name] = hint
        if param.default is param.empty:
            required.append(param.name)
    if info.parameters is not None:
        parameters = dict(info.parameters)
    else:
        parameters = {"type": "object", "properties": properties}
        if required:
            parameters["required"] = required
    return FunctionTool(
        name=name,
        description=description,
        parameters=parameters,
        function=function,
        is_async=_is_async(function),
        hints=None if info.parameters is not None else types_of,
        call_parameter=call_parameter,
    )


def schema_of(hint: Any, seen: frozenset[type] = frozenset()) -> dict[str, Any]:
    """The JSON schema of a type hint; TypeError for a type the model cannot be asked for."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any:
        return {}
    if origin is typing.Annotated:
        schema = schema_of(args[0], seen)
        notes = [a for a in hint.__metadata__ if isinstance(a, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if origin is typing.Literal:
        return _enum(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([member.value for member in hint])
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        schema = schema_of(options[0], seen) if len(options) == 1 else {}
        if len(options) > 1:
            schema = {"anyOf": [schema_of(a, seen) for a in options]}
        if len(options) < len(args):  # Optional
            if isinstance(schema.get("type"), str):
                schema["type"] = [schema["type"], "null"]
            else:
                schema = {"anyOf": [*schema.get("anyOf", [schema]), {"type": "null"}]}
        return schema
    if origin in (list, set, frozenset) or hint in (list, set, frozenset):
        return {"type": "array", "items": schema_of(args[0], seen) if args else {}}
    if origin is tuple or hint is tuple:
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError("tuples must be tuple[X, ...]")
        return {"type": "array", "items": schema_of(args[0], seen) if args else {}}
    if origin is dict or hint is dict:
        if args and args[0] is not str:
            raise TypeError("dict keys must be str")
        return {"type": "object", "additionalProperties": schema_of(args[1], seen) if args else {}}
    if isinstance(hint, type) and (attrs.has(hint) or dataclasses.is_dataclass(hint)):
        if hint in seen:
            raise TypeError(f"{hint.__name__} refers to itself")
        return _record(hint, seen | {hint})
    raise TypeError(
        f"cannot describe {hint!r} to the model (use str, int, float, bool, Literal, Enum, "
        "Optional, list, dict[str, X], an attrs class or a dataclass)"
    )


def output(result: Any) -> str:
    """What the model reads: a string as it is; anything else as JSON (None: {"ok": true})."""
    if isinstance(result, str):
        return result
    if result is None:
        return '{"ok":true}'
    return orjson.dumps(_CONVERTER.unstructure(result)).decode()


def _enum(values: list[Any]) -> dict[str, Any]:
    kinds = {_SCALARS.get(type(v)) for v in values}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _record(cls: type, seen: frozenset[type]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if attrs.has(cls):
        fields = [(f.name, f.default is attrs.NOTHING) for f in attrs.fields(cls)]
    else:
        fields = [
            (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        ]
    for name, needed in fields:
        if name not in hints:
            raise TypeError(f"{cls.__name__}.{name} needs a type hint")
        properties[name] = schema_of(hints[name], seen)
        if needed:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    summary, _ = _docstring(inspect.getdoc(cls) or "")
    if summary and not summary.startswith(f"{cls.__name__}("):  # not the generated one
        schema["description"] = summary
    return schema


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (the text before an `Args:` section) and the parameters' descriptions."""
    found = _ARGS_SECTION.search(doc)
    if found is None:
        return doc.strip(), {}
    described: dict[str, str] = {}
    current = None
    for line in doc[found.end() :].splitlines():
        entry = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if entry:
            current = entry.group(1)
            described[current] = entry.group(2).strip()
        elif line.strip() and line.startswith((" ", "\t")) and current is not None:
            described[current] = f"{described[current]} {line.strip()}".strip()
        elif line.strip():
            break  # the next section
    return doc[: found.start()].strip(), described


def _is_async(function: Callable[..., Any]) -> bool:
    call = getattr(function, "__call__", None)  # noqa: B004  (a callable object's method)
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    return str(exc) or type(exc).__name__
