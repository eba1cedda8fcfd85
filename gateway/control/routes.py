"""Routes: which `[[routes]]` table a call belongs to.

Owns: matching an `IncomingCall` against the configured routes, the audio format a route asks
ACS for, and reading the route from a media WebSocket's path (`/ws/<route>`). Never: I/O,
processors (the plane holds one per route).

A route matches when every criterion it gives holds: `callee` (the IncomingCall's `to`) and
`caller` (its `from`) list identifiers, any of which may equal the rawId, the phone number or
the ACS user id; `headers` lists customContext SIP/VoIP headers whose values must be equal
(names compared without case). Routes are tried in the file's order; the first route that
gives no criterion is the default, and without one the implicit route `default` (the top-level
`processor`) takes the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qs, urlsplit

from ..config import Route
from ..config_settings import ROUTE_NAME
from .events import Identifier, IncomingCall

DEFAULT_ROUTE: Final = "default"
MEDIA_PREFIX: Final = "/ws/"
# ACS's audio format for a route that names none: the model's own rate for the realtime bridge
# (no resampling either way: less delay and CPU), else ACS's default.
NATIVE_FORMATS: Final = {"realtime": "pcm24KMono"}
ACS_DEFAULT_FORMAT: Final = "pcm16KMono"


def audio_format(route: Route, processor: str) -> str:
    """The `audioFormat` to ask ACS for on `route`, whose processor is `route.processor` or
    else `processor` (the top-level one)."""
    if route.audio_format is not None:
        return route.audio_format
    return NATIVE_FORMATS.get(route.processor or processor, ACS_DEFAULT_FORMAT)


def implicit_default(routes: Sequence[Route]) -> Route:
    """The route a call matching no table takes."""
    return next((r for r in routes if r.is_default), Route(name=DEFAULT_ROUTE))


def all_routes(routes: Sequence[Route]) -> dict[str, Route]:
    """Every route by name, the implicit default included."""
    found = {route.name: route for route in routes}
    found.setdefault(DEFAULT_ROUTE, implicit_default(routes))
    return found


def _matches(identifier: Identifier, patterns: Sequence[str]) -> bool:
    return not patterns or any(p in identifier.names for p in patterns)


def choose(routes: Sequence[Route], call: IncomingCall) -> Route:
    """The first route whose criteria the call meets."""
    for route in routes:
        if route.is_default:
            continue
        if not (_matches(call.callee, route.callee) and _matches(call.caller, route.caller)):
            continue
        if all(call.headers.get(k.lower()) == v for k, v in route.headers.items()):
            return route
    return implicit_default(routes)


def media_target(target: str) -> tuple[str | None, str | None]:
    """The route named by a media WebSocket's path (None: not `/ws/<route>`) and its token."""
    url = urlsplit(target)
    token = parse_qs(url.query).get("token", [None])[-1]
    if not url.path.startswith(MEDIA_PREFIX):
        return None, token
    name = url.path[len(MEDIA_PREFIX) :].rstrip("/")
    return (name if ROUTE_NAME.fullmatch(name) else None), token
