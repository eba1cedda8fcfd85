"""Answering: each IncomingCall answered on its route, and what this replica remembers of the
calls it answered.

Owns: the answer of one call (the route chosen, the media and callback URLs with their signed
tokens, the SDK request bounded by `answer_timeout`, the result counted and logged with a
sentence a person can act on), the latencies (event received -> answer request handed to the
SDK; answered -> media WebSocket accepted), and the bounded memory of calls answered lately:
an Event Grid redelivery is not answered twice, a call's media connection gets the
IncomingCall's caller, callee and custom context with its control handle, and a media
connection for a call whose answer failed or timed out, or that has ended, is refused (its
token outlives it). As a call's home (the replica named in its tokens) it also remembers which
replica claimed the call's media (`claim`, `holder`). Never: parses webhooks or checks secrets
(`gateway.control.plane`), or needs that memory to accept a call (the tokens carry what a
replica needs).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import attrs
import trio

from ..call.interface import CallControlHandle
from ..config import Config, Route
from . import routes as routing
from .answer import Answerer, AnswerFailed, AnswerRequest
from .diagnostics import explain
from .events import IncomingCall
from .replies import ControlStats
from .tokens import CallTokens, TokenRefused

if TYPE_CHECKING:
    from .calls import IncomingCall as IncomingCallData

log = logging.getLogger("gateway.control")

CALLBACK_PATH: Final = "/callbacks"
RECENT_CALLS: Final = 4096  # calls answered lately: Event Grid delivers at least once


OVER: Final = ("failed", "timeout", "ended")  # a call in one of these states takes no media


@attrs.define
class _Answered:
    """A call this replica answered (or is answering), as long as it is remembered."""

    incoming: IncomingCallData | None
    connection_id: str | None = None
    answered_at: float | None = None  # until its media WebSocket is accepted
    state: str = "answering"  # then answered, failed, timeout; ended (CallDisconnected, ...)
    holder: str | None = None  # the replica that claimed its media last (None: this one)


def _ignore(seconds: float) -> None:
    pass


class Answering:
    """Answers calls with `answerer`, signing their URLs with `tokens`."""

    def __init__(
        self, config: Config, answerer: Answerer, tokens: CallTokens, stats: ControlStats
    ) -> None:
        self.config, self.answerer, self.tokens, self.stats = config, answerer, tokens, stats
        self.answered: OrderedDict[str, _Answered] = OrderedDict()  # by correlation id
        self.answer_latency: Callable[[float], None] = _ignore
        self.media_latency: Callable[[float], None] = _ignore

    async def answer_all(
        self, calls: Sequence[tuple[IncomingCall, Mapping[str, Any]]], received: float
    ) -> None:
        """Answer each call (with its event's `data`), at once; returns when all are done."""
        async with trio.open_nursery() as nursery:
            for call, data in calls:
                nursery.start_soon(self.answer, call, data, received)

    async def answer(self, call: IncomingCall, data: Mapping[str, Any], received: float) -> None:
        self.stats.incoming_calls += 1
        route = routing.choose(self.config.routes, call)
        calllog = logging.LoggerAdapter(log, {"correlation_id": call.correlation_id})
        known = self.answered.get(call.correlation_id)
        if known is not None and known.state not in ("failed", "timeout"):
            self.stats.answers["duplicate"] += 1
            calllog.info("IncomingCall %s delivered again: already answered", call.correlation_id)
            return
        answered = self._remember(call.correlation_id, _incoming_data(data))
        request = self._request(call, route)
        calllog.info("answering call %s on route %s", call.correlation_id, route.name)
        result = "answered"
        with trio.move_on_after(self.config.answer_timeout) as scope:
            try:
                self.answer_latency(trio.current_time() - received)
                answered.connection_id = await self.answerer.answer(request)
            except AnswerFailed as exc:
                result = "failed"
                calllog.warning(
                    "answering call %s failed (%s): %s. %s",
                    call.correlation_id,
                    exc.code,
                    exc,
                    explain(exc.code, exc.sub_code),
                )
        if scope.cancelled_caught:
            result = "timeout"
            calllog.warning(
                "answering call %s timed out: ACS did not reply in %.1f s",
                call.correlation_id,
                self.config.answer_timeout,
            )
        self.stats.answers[result] += 1
        answered.state = result
        if result != "answered":  # remembered to refuse its media; a redelivery tries again
            return
        answered.answered_at = trio.current_time()
        self.stats.answer_seconds.append(answered.answered_at - received)
        calllog.info("answered call %s: connection %s", call.correlation_id, answered.connection_id)

    def control(self, correlation_id: str, connection_id: str | None) -> CallControlHandle | None:
        """The control handle for the media connection of a call (its token checked): None
        without a call connection id; TokenRefused("other_call") when the connection id is
        not the one ACS gave this replica for that call; TokenRefused("call_over") when its
        answer failed or timed out, or it has ended."""
        answered = self.claim(correlation_id, None)
        if answered is not None and answered.connection_id is not None:
            if connection_id not in (None, answered.connection_id):
                raise TokenRefused("other_call", "call token is for another call connection")
            connection_id = answered.connection_id
        if not connection_id:
            return None
        return self.answerer.control(connection_id, None if answered is None else answered.incoming)

    def claim(self, correlation_id: str, holder: str | None) -> _Answered | None:
        """The call's media is now held by the replica at `holder` (None: this one); what this
        replica remembers of the call (None: nothing). TokenRefused("call_over") when the
        call's answer failed or timed out, or it has ended."""
        answered = self.answered.get(correlation_id)
        if answered is None:
            return None
        if answered.state in OVER:
            raise TokenRefused(
                "call_over",
                f"the call's answer {answered.state}"
                if answered.state != "ended"
                else "the call has ended",
            )
        answered.holder = holder
        if answered.answered_at is not None:  # the call's first media connection
            self.media_latency(trio.current_time() - answered.answered_at)
            answered.answered_at = None
        return answered

    def holder(self, correlation_id: str) -> str | None:
        """The replica holding the call's media, when another one claimed it."""
        answered = self.answered.get(correlation_id)
        return None if answered is None else answered.holder

    def ended(self, correlation_id: str) -> None:
        """The call is over (CallDisconnected, MediaStreamingFailed): its tokens take no media."""
        answered = self.answered.get(correlation_id)
        if answered is not None and answered.state != "answering":
            answered.state = "ended"

    def media_url(self, route: str, token: str = "...") -> str:
        """The transport URL of a route (`token` elided by default: the URL as logged)."""
        return media_url(self.config, route, token)

    def _request(self, call: IncomingCall, route: Route) -> AnswerRequest:
        home = self.config.replica_url  # the replica that remembers the call
        callback, media = call_urls(self.config, self.tokens, route.name, call.correlation_id, home)
        audio = routing.audio_format(route, self.config.processor)
        return AnswerRequest(call.incoming_call_context, callback, media, route, audio)

    def _remember(self, correlation_id: str, incoming: IncomingCallData | None) -> _Answered:
        answered = self.answered[correlation_id] = _Answered(incoming)
        while len(self.answered) > RECENT_CALLS:
            self.answered.popitem(last=False)
        return answered


def media_url(config: Config, route: str, token: str = "...") -> str:
    """The transport URL of a route on `public_url` (`token` elided by default)."""
    base = (config.public_url or "").rstrip("/")
    return f"wss{base[len('https') :]}{routing.MEDIA_PREFIX}{route}?token={token}"


def call_urls(
    config: Config, tokens: CallTokens, route: str, call_id: str, home: str | None = None
) -> tuple[str, str]:
    """The callback URL and the media transport URL of one call, each with its own token;
    `call_id` is the correlation id of a call we answer, the dial id of one we place; `home`
    the replica that answered it (None: none remembers it)."""
    assert config.public_url is not None
    media = quote(tokens.issue(route, call_id, "media", home))
    callback = quote(tokens.issue(route, call_id, "callback", home))
    base = config.public_url.rstrip("/")
    return f"{base}{CALLBACK_PATH}?token={callback}", media_url(config, route, media)


def _incoming_data(data: Mapping[str, Any]) -> IncomingCallData | None:
    """The caller, callee and custom context a processor sees (`CallControl.incoming`)."""
    from .calls import IncomingCall as IncomingCallData  # the SDK: answering has it

    try:
        return IncomingCallData.from_event_data(data)
    except ValueError:  # pragma: no cover  (parse() has checked the context already)
        return None
