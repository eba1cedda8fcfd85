"""The callback endpoint (`/callbacks`): the Call Automation events of the calls we answered.

Owns: admitting a callback (a callback token for the call of every event it carries, or for a
call we placed, whose correlation id the token cannot name, events of one call; with
`acs_resource_id` set, ACS's JWT too), then logging and counting each event, with a sentence a
person can act on for the failures (`gateway.control.diagnostics`), and handing the admitted
events to `deliver` (the plane: the events that act on a live call reach the replica holding
it, `gateway.control.live`). Never: calls ACS. Anything refused gets a 4xx, is counted and
changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from ..server.auth import AuthFailure, TokenChecker
from .diagnostics import explain
from .events import Event
from .replies import ControlStats, HttpAnswer, refused, text_answer
from .tokens import CallGrant, CallTokens, TokenRefused

log = logging.getLogger("gateway.control")

FAILURES: Final = ("MediaStreamingFailed", "AnswerFailed", "CallTransferFailed")


class CallbackEndpoint:
    """Callbacks for calls answered with `tokens`; `media_url(route)` is the transport URL the
    answer sent (shown, token elided, when streaming failed)."""

    def __init__(
        self,
        tokens: CallTokens | None,
        stats: ControlStats,
        media_url: Callable[[str], str],
        auth: TokenChecker | None = None,
        deliver: Callable[[CallGrant, Sequence[Event]], Awaitable[None]] | None = None,
    ) -> None:
        self.tokens, self.stats, self.media_url, self.auth = tokens, stats, media_url, auth
        self.deliver = deliver

    async def respond(
        self, headers: Mapping[str, str], token: str | None, events: Sequence[Event]
    ) -> HttpAnswer:
        if self.tokens is None:
            return refused(self.stats, "not_answering", text_answer(404, "no such endpoint"))
        try:
            grant = self.tokens.check(token, "callback")
        except TokenRefused as exc:
            status = 401 if exc.reason == "missing" else 403
            answer = text_answer(status, "call token refused")
            return refused(self.stats, f"callback_{exc.reason}", answer)
        calls = {e.data.get("correlationId") for e in events}
        if calls != {grant.correlation_id} and not (grant.dialled and len(calls) == 1):
            answer = text_answer(403, "event for another call")
            return refused(self.stats, "callback_other_call", answer)
        if self.auth is not None:
            try:
                await self.auth.check(headers)
            except AuthFailure as exc:
                answer = text_answer(exc.status, "ACS token refused")
                return refused(self.stats, f"callback_jwt_{exc.reason}", answer)
        for event in events:
            self._log(event, grant.route)
        if self.deliver is not None:
            await self.deliver(grant, events)
        return HttpAnswer(200)

    def _log(self, event: Event, route: str) -> None:
        kind = event.type.rpartition(".")[2]
        self.stats.callbacks[kind] += 1
        data = event.data
        ids = f"call {data.get('correlationId')} (connection {data.get('callConnectionId')})"
        result = data.get("resultInformation") or {}
        code, sub_code = result.get("code"), result.get("subCode")
        if kind in FAILURES:
            update = data.get("mediaStreamingUpdate") or {}
            details = str(update.get("mediaStreamingStatusDetails", ""))
            log.warning(
                "%s: %s %s/%s %r. %s",
                ids,
                kind,
                code,
                sub_code,
                result.get("message", ""),
                explain(code, sub_code, details, self.media_url(route)),
            )
        else:
            log.info("%s: %s on route %s", ids, kind, route)
