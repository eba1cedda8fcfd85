"""The control plane: the webhooks on the media port, answering, and each call's route.

Owns: what a plain HTTP request to the gateway gets (`respond`): the Event Grid endpoint
(`/eventgrid`: both validation handshakes, IncomingCall answered on its route) and the callback
endpoint (`/callbacks`: Call Automation events, logged and counted); and which processor a media
WebSocket runs (`media`). Never: reads sockets (`gateway.server.connection` hands over each
parsed request and sends the answer), or keeps per-call state a replica needs: everything rides
in the call's tokens (`gateway.control.tokens`).

Security: the Event Grid endpoint wants the shared secret in its query string (`?secret=`,
compared in constant time); a callback wants a valid callback token for the call of every event
it carries and, with `acs_resource_id` set, ACS's JWT; with answering on, a media WebSocket
wants a media token for its route and call. Anything refused gets a 4xx, is counted in
`ControlStats.refused`, and changes nothing. Nothing a webhook sends makes us call ACS except
an IncomingCall with the right secret.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import orjson
import trio

from ..config import Config, Route
from ..errors import ConfigError
from ..processors import Processor
from ..server.auth import AuthFailure, TokenChecker
from ..wire.handshake import Handshake, Reject
from . import routes as routing
from .answer import Answerer, AnswerFailed, AnswerRequest
from .diagnostics import explain
from .events import (
    INCOMING_CALL,
    SUBSCRIPTION_VALIDATION,
    BadBody,
    Event,
    IncomingCall,
    parse_events,
)
from .tokens import CallTokens, TokenRefused

log = logging.getLogger("gateway.control")

EVENTGRID_PATH: Final = "/eventgrid"
CALLBACK_PATH: Final = "/callbacks"
EVENTGRID_SECRET_ENV: Final = "ACS_GATEWAY_EVENTGRID_SECRET"
CALL_TOKEN_KEY_ENV: Final = "ACS_GATEWAY_CALL_TOKEN_KEY"
RECENT_CALLS: Final = 4096  # correlation ids answered lately: Event Grid delivers at least once
_JSON_TYPES: Final = ("application/json", "application/cloudevents")


@attrs.frozen
class HttpAnswer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, value: object) -> HttpAnswer:
    return HttpAnswer(status, orjson.dumps(value), "application/json")


def _text(status: int, text: str) -> HttpAnswer:
    return HttpAnswer(status, text.encode())


@attrs.define
class ControlStats:
    """The control plane's counts (HTTP requests, answers, callbacks)."""

    incoming_calls: int = 0
    answers: Counter[str] = attrs.field(factory=Counter)  # answered, failed, timeout, duplicate
    callbacks: Counter[str] = attrs.field(factory=Counter)  # by event type (short name)
    refused: Counter[str] = attrs.field(factory=Counter)  # webhook and media refusals, by reason
    answer_seconds: list[float] = attrs.field(factory=list)  # event received -> answered


class ControlPlane:
    """Routes media connections and, with `answerer` and `tokens`, answers calls."""

    def __init__(
        self,
        config: Config,
        processors: Mapping[str, Processor],
        *,
        answerer: Answerer | None = None,
        tokens: CallTokens | None = None,
        eventgrid_secret: str | None = None,
        auth: TokenChecker | None = None,
    ) -> None:
        self.config = config
        self.routes = routing.all_routes(config.routes)
        self.processors = dict(processors)
        missing = set(self.routes) - set(self.processors)
        if missing:
            raise ConfigError(f"routes without a processor: {', '.join(sorted(missing))}")
        self.answerer, self.tokens, self.auth = answerer, tokens, auth
        self.answering = answerer is not None and tokens is not None
        if self.answering and (config.public_url is None or not eventgrid_secret):
            raise ConfigError(f"answering needs public_url and ${EVENTGRID_SECRET_ENV}")
        self._secret = (eventgrid_secret or "").encode()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.stats = ControlStats()
        self.answer_latency: Callable[[float], None] = self.stats.answer_seconds.append

    def use_auth(self, auth: TokenChecker | None) -> None:
        self.auth = auth

    @property
    def max_body_bytes(self) -> int | None:
        """The webhook body cap; None when plain HTTP is not served (426 as before)."""
        return self.config.max_webhook_bytes if self.answering else None

    # -- media --

    def media(self, handshake: Handshake) -> tuple[str, Processor] | Reject:
        """The route and processor a media WebSocket runs, or why it is refused."""
        name, token = routing.media_target(handshake.target)
        if self.tokens is None:  # media only: the path picks the route, any other path the default
            if name is None:
                return routing.DEFAULT_ROUTE, self.processors[routing.DEFAULT_ROUTE]
            if name not in self.routes:
                return self._refuse("unknown_route", Reject(404, f"no route {name!r}"))
            return name, self.processors[name]
        if name is None or name not in self.routes:
            return self._refuse("unknown_route", Reject(404, "no such media route"))
        try:
            grant = self.tokens.check(token, "media")
        except TokenRefused as exc:
            status = 401 if exc.reason == "missing" else 403
            return self._refuse(f"media_{exc.reason}", Reject(status, "call token refused"))
        correlation = handshake.headers.get("x-ms-call-correlation-id")
        if grant.route != name or (correlation is not None and correlation != grant.correlation_id):
            return self._refuse("media_other_call", Reject(403, "call token is for another call"))
        return name, self.processors[name]

    def _refuse(self, reason: str, reject: Reject) -> Reject:
        self.stats.refused[reason] += 1
        return reject

    # -- HTTP --

    async def respond(self, request: Handshake) -> HttpAnswer:
        """The answer to one plain HTTP request (never raises but for cancellation)."""
        url = urlsplit(request.target)
        query = parse_qs(url.query)
        if url.path not in (EVENTGRID_PATH, CALLBACK_PATH):
            return self._refused("not_found", _text(404, "no such endpoint"))
        allowed = ("OPTIONS", "POST") if url.path == EVENTGRID_PATH else ("POST",)
        if request.method not in allowed:
            answer = _text(405, "method not allowed")
            return self._refused(
                "method", attrs.evolve(answer, headers=(("allow", ", ".join(allowed)),))
            )
        if url.path == EVENTGRID_PATH:
            supplied = query.get("secret", [""])[-1].encode()
            if not hmac.compare_digest(supplied, self._secret):
                return self._refused("eventgrid_secret", _text(401, "wrong or missing secret"))
            if request.method == "OPTIONS":
                return self._cloudevents_handshake(request.headers)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith(_JSON_TYPES):
            return self._refused("content_type", _text(415, "JSON bodies only"))
        try:
            events = parse_events(request.body)
            if url.path == EVENTGRID_PATH:
                return await self._eventgrid(request.headers, events)
            return await self._callbacks(request.headers, query.get("token", [None])[-1], events)
        except BadBody as exc:
            return self._refused("bad_body", _text(400, f"bad body: {exc}"))

    def _refused(self, reason: str, answer: HttpAnswer) -> HttpAnswer:
        self.stats.refused[reason] += 1
        log.info("webhook refused with %d (%s)", answer.status, reason)
        return answer

    def _cloudevents_handshake(self, headers: Mapping[str, str]) -> HttpAnswer:
        origin = headers.get("webhook-request-origin")
        if not origin:
            return self._refused("bad_body", _text(400, "no WebHook-Request-Origin"))
        return HttpAnswer(200, headers=(("webhook-allowed-origin", origin), ("allow", "POST")))

    async def _eventgrid(self, headers: Mapping[str, str], events: Sequence[Event]) -> HttpAnswer:
        received = trio.current_time()
        for event in events:
            if event.type == SUBSCRIPTION_VALIDATION:
                code = event.data.get("validationCode")
                if not isinstance(code, str):
                    raise BadBody("validation event without validationCode")
                log.info(
                    "Event Grid subscription %s validated",
                    headers.get("aeg-subscription-name", "?"),
                )
                return _json(200, {"validationResponse": code})
        calls = [IncomingCall.parse(e.data) for e in events if e.type == INCOMING_CALL]
        if calls and not self.answering:
            return self._refused("not_answering", _text(503, "answering is not configured"))
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(self._answer, call, received)
        return HttpAnswer(200)

    async def _answer(self, call: IncomingCall, received: float) -> None:
        assert self.answerer is not None and self.tokens is not None
        self.stats.incoming_calls += 1
        route = routing.choose(self.config.routes, call)
        calllog = logging.LoggerAdapter(log, {"correlation_id": call.correlation_id})
        if call.correlation_id in self._recent:
            self.stats.answers["duplicate"] += 1
            calllog.info("IncomingCall %s delivered again: already answered", call.correlation_id)
            return
        request = self._answer_request(call, route)
        calllog.info("answering call %s on route %s", call.correlation_id, route.name)
        result = "answered"
        with trio.move_on_after(self.config.answer_timeout) as scope:
            try:
                connection_id = await self.answerer.answer(request)
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
        if result == "answered":
            self._remember(call.correlation_id)
            self.answer_latency(trio.current_time() - received)
            calllog.info("answered call %s: connection %s", call.correlation_id, connection_id)

    def _answer_request(self, call: IncomingCall, route: Route) -> AnswerRequest:
        assert self.tokens is not None and self.config.public_url is not None
        base = self.config.public_url.rstrip("/")
        media = quote(self.tokens.issue(route.name, call.correlation_id, "media"))
        callback = quote(self.tokens.issue(route.name, call.correlation_id, "callback"))
        return AnswerRequest(
            call.incoming_call_context,
            f"{base}{CALLBACK_PATH}?token={callback}",
            f"wss{base[len('https') :]}{routing.MEDIA_PREFIX}{route.name}?token={media}",
            route,
        )

    def _remember(self, correlation_id: str) -> None:
        self._recent[correlation_id] = None
        while len(self._recent) > RECENT_CALLS:
            self._recent.popitem(last=False)

    async def _callbacks(
        self, headers: Mapping[str, str], token: str | None, events: Sequence[Event]
    ) -> HttpAnswer:
        if self.tokens is None:
            return self._refused("not_answering", _text(404, "no such endpoint"))
        try:
            grant = self.tokens.check(token, "callback")
        except TokenRefused as exc:
            status = 401 if exc.reason == "missing" else 403
            return self._refused(f"callback_{exc.reason}", _text(status, "call token refused"))
        if any(e.data.get("correlationId") != grant.correlation_id for e in events):
            return self._refused("callback_other_call", _text(403, "event for another call"))
        if self.auth is not None:
            try:
                await self.auth.check(headers)
            except AuthFailure as exc:
                return self._refused(
                    f"callback_jwt_{exc.reason}", _text(exc.status, "ACS token refused")
                )
        for event in events:
            self._callback(event, grant.route)
        return HttpAnswer(200)

    def _callback(self, event: Event, route: str) -> None:
        kind = event.type.rpartition(".")[2]
        self.stats.callbacks[kind] += 1
        data = event.data
        ids = f"call {data.get('correlationId')} (connection {data.get('callConnectionId')})"
        result = data.get("resultInformation") or {}
        code, sub_code = result.get("code"), result.get("subCode")
        if kind in ("MediaStreamingFailed", "AnswerFailed", "CallTransferFailed"):
            update = data.get("mediaStreamingUpdate") or {}
            details = str(update.get("mediaStreamingStatusDetails", ""))
            log.warning(
                "%s: %s %s/%s %r. %s",
                ids,
                kind,
                code,
                sub_code,
                result.get("message", ""),
                explain(code, sub_code, details, self._media_url(route)),
            )
        else:
            log.info("%s: %s on route %s", ids, kind, route)

    def _media_url(self, route: str) -> str:
        base = (self.config.public_url or "").rstrip("/")
        return f"wss{base[len('https') :]}{routing.MEDIA_PREFIX}{route}?token=..."


def from_config(
    config: Config,
    environ: Mapping[str, str],
    load_processor: Callable[[str, Mapping[str, object]], Processor],
    **client_options: object,
) -> ControlPlane | None:
    """The daemon's control plane: None with no routes and no `public_url` (media only).
    Loads each route's processor now, so bad options fail at start-up."""
    if not config.routes and config.public_url is None:
        return None
    processors = {}
    for name, route in routing.all_routes(config.routes).items():
        processor = route.processor or config.processor
        options = (
            route.options if route.options is not None else config.processors.get(processor, {})
        )
        processors[name] = load_processor(processor, options)
    if config.public_url is None:
        return ControlPlane(config, processors)
    from .answer import SdkAnswerer

    key = environ.get(CALL_TOKEN_KEY_ENV, "")
    if len(key.encode()) < 32:
        raise ConfigError(f"public_url is set: ${CALL_TOKEN_KEY_ENV} must hold 32 bytes or more")
    return ControlPlane(
        config,
        processors,
        answerer=SdkAnswerer.from_config(config, environ, **client_options),
        tokens=CallTokens(key.encode(), config.call_token_lifetime),
        eventgrid_secret=environ.get(EVENTGRID_SECRET_ENV),
    )
