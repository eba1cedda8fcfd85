"""Processors: what a call does with the caller's audio.

Owns: the public processor interface (`Call`, `Processor`, `ProcessorFactory`) and the registry
that turns a configured name into a processor. Never: WebSockets, encoding, task layout (that is
`gateway.call`).

A processor is an async function that receives one `Call` and returns when it is done with the
call. It reads `call.packets` (an async iterator of inbound packets, ending when ACS hangs up)
and speaks with `call.player`. One that does little per audio frame may hear the frames in the
call's receive task instead, through an `audio_handler(call)` method (`AudioHandler`). It
runs inside the call's nursery, so any task it starts in a nursery of its own, and any socket
it opens with `async with`, ends with the call.

A *factory* builds a processor from its options (the `[processors.NAME]` table of the
configuration) once, at start-up, so bad options fail before the first call:

    def make(options: Mapping[str, Any]) -> Processor: ...

`load(name, options)` finds a factory by built-in name (`echo`), by entry point in the group
`acs_media_gateway.processors`, or by import path `package.module:factory`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeAlias, cast

from ..call.interface import AudioHandler, Call, CallStats, Processor
from ..errors import ConfigError, ProcessorNotFound

ProcessorFactory: TypeAlias = Callable[[Mapping[str, Any]], Processor]

ENTRY_POINT_GROUP = "acs_media_gateway.processors"

_BUILTIN: dict[str, str] = {
    "echo": "gateway.processors.echo:make",
    "realtime": "gateway.processors.realtime:make",
}

__all__ = ["AudioHandler", "Call", "CallStats", "Processor", "ProcessorFactory", "load", "register"]

_registered: dict[str, ProcessorFactory] = {}


def register(name: str, factory: ProcessorFactory) -> None:
    """Make `factory` loadable as `name` (for embedding the gateway in your own program)."""
    _registered[name] = factory


def _import(path: str) -> ProcessorFactory:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProcessorNotFound(f"processor: cannot import {module_name!r} ({exc})") from exc
    try:
        # A plugin's factory is whatever the module holds; calling it is what checks it.
        return cast(ProcessorFactory, getattr(module, attr or "make"))
    except AttributeError:
        raise ProcessorNotFound(f"processor: {module_name!r} has no {attr!r}") from None


def find_factory(name: str) -> ProcessorFactory:
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        return _import(_BUILTIN[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            # As with an import path: calling the loaded object is what checks it.
            return cast(ProcessorFactory, ep.load())
    if ":" in name:
        return _import(name)
    known = sorted(
        {*_BUILTIN, *_registered, *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))}
    )
    raise ProcessorNotFound(
        f"processor: unknown processor {name!r}; known: {', '.join(known)}, "
        "or give an import path 'package.module:factory'"
    )


def load(name: str, options: Mapping[str, Any] | None = None) -> Processor:
    """Build the processor called `name` with its options; raises ConfigError on bad options."""
    factory = find_factory(name)
    try:
        return factory(dict(options or {}))
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"processors.{name}: {exc}") from exc
