"""What the server needs of a control plane (`gateway.control.ControlPlane`), as protocols.

Owns: the shape of the plain HTTP answers, of a media connection's route, processor and call
control, and of a live call the control plane may end. Never: an implementation (the server
does not import `gateway.control`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import trio

from ..call.interface import CallControlHandle
from ..config import Config
from ..ops.metrics import Metrics
from ..processors import Processor
from ..wire.websocket import Handshake, Reject
from .auth import TokenChecker

__all__ = ["CallRouting", "HeldCall", "HttpReply", "MediaChoice"]


class HttpReply(Protocol):
    """A plain HTTP answer (`gateway.control.HttpAnswer`)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...


class HeldCall(Protocol):
    """A live call the control plane may end (`gateway.control.live.LiveCall`): `ending` is
    set when it must (CallDisconnected, MediaStreamingFailed), `reason` says why."""

    @property
    def ending(self) -> trio.Event: ...
    @property
    def reason(self) -> str: ...


class MediaChoice(Protocol):
    """What a media connection runs (`gateway.control.plane.MediaRoute`)."""

    @property
    def name(self) -> str: ...  # the route's
    @property
    def processor(self) -> Processor: ...
    @property
    def control(self) -> CallControlHandle | None: ...  # None: not a call we answered
    def hold(self) -> AbstractContextManager[HeldCall | None]: ...  # while the call runs


class CallRouting(Protocol):
    """The control plane as the server sees it (`gateway.control.ControlPlane`): it picks a
    media connection's route and processor, and answers plain HTTP requests (webhooks)."""

    @property
    def max_body_bytes(self) -> int | None: ...  # None: no plain HTTP (426)
    async def media(self, handshake: Handshake) -> MediaChoice | Reject: ...
    def use_auth(self, auth: TokenChecker | None) -> None: ...  # ACS's JWT on callbacks
    def use_metrics(self, metrics: Metrics) -> None: ...  # its counts, in /metrics
    def prepare_routes(self, config: Config) -> Callable[[], None]: ...  # a reload's routes
    async def respond(self, request: Handshake) -> HttpReply: ...
