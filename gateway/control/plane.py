"""The control plane: the webhooks on the media port, answering, and each call's route.

Owns: what a plain HTTP request to the gateway gets (`respond`): the Event Grid endpoint
(`/eventgrid`: both validation handshakes, IncomingCall answered on its route) and the callback
endpoint (`/callbacks`, `gateway.control.callbacks`); and what a media WebSocket runs (`media`):
its route's processor and, for a call this gateway answered, the call's control handle. Never:
reads sockets (`gateway.server.connection` hands over each parsed request and sends the
answer), or keeps per-call state a replica needs to accept a call: that rides in the call's
tokens (`gateway.control.tokens`). What needs a call's live state reaches it here or on the
replica holding it (`gateway.control.reach`, `POST /replicas`).

Security: the Event Grid endpoint wants the shared secret in its query string (`?secret=`,
compared in constant time); a callback wants a valid callback token for the call of every event
it carries and, with `acs_resource_id` set, ACS's JWT; with answering on, a media WebSocket
wants a media token for its route and call. Anything refused gets a 4xx, is counted in
`ControlStats.refused`, and changes nothing. Nothing a webhook sends makes us call ACS except
an IncomingCall with the right secret; a call's control handle acts only on the call connection
its media token names.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Final
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from ..call.interface import CallControlHandle
from ..config import Config
from ..errors import ConfigError
from ..ops.metrics import Metrics
from ..processors import Processor
from ..server.auth import TokenChecker
from ..wire.handshake import Handshake, Reject
from . import routes as routing
from .answer import Answerer
from .answering import CALLBACK_PATH, Answering
from .callbacks import CallbackEndpoint
from .events import (
    INCOMING_CALL,
    SUBSCRIPTION_VALIDATION,
    BadBody,
    Event,
    IncomingCall,
    parse_events,
)
from .live import LiveCall, LiveCalls
from .reach import CallReach
from .replicas import (
    REPLICA_PATH,
    ReplicaKey,
    Replicas,
)
from .replies import ControlStats, HttpAnswer, json_answer, refused, text_answer
from .tokens import CallTokens, TokenRefused

__all__ = [
    "CALLBACK_PATH",
    "ControlPlane",
    "ControlStats",
    "HttpAnswer",
    "MediaRoute",
    "from_config",
]

log = logging.getLogger("gateway.control")

EVENTGRID_PATH: Final = "/eventgrid"
EVENTGRID_SECRET_ENV: Final = "ACS_GATEWAY_EVENTGRID_SECRET"
CALL_TOKEN_KEY_ENV: Final = "ACS_GATEWAY_CALL_TOKEN_KEY"
_JSON_TYPES: Final = ("application/json", "application/cloudevents")


@attrs.frozen
class MediaRoute:
    """What a media WebSocket runs: its route's processor and, for a call this gateway
    answered, the call's control handle (`Call.control`) and its place among the live calls
    (`hold`: held while the call runs, so that callbacks reach it)."""

    name: str
    processor: Processor
    control: CallControlHandle | None = None
    live: LiveCall | None = None
    registry: LiveCalls | None = None

    def hold(self) -> AbstractContextManager[LiveCall | None]:
        if self.live is None or self.registry is None:
            return nullcontext(None)
        return self.registry.hold(self.live)


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
        load_processor: Callable[[str, Mapping[str, object]], Processor] | None = None,
    ) -> None:
        self.load_processor = load_processor  # for reloaded routes (None: they need a restart)
        self.config = config
        self.routes = routing.all_routes(config.routes)
        self.processors = dict(processors)
        missing = set(self.routes) - set(self.processors)
        if missing:
            raise ConfigError(f"routes without a processor: {', '.join(sorted(missing))}")
        self.tokens = tokens
        self.stats = ControlStats()
        self.answering: Answering | None = None
        if answerer is not None and tokens is not None:
            if config.public_url is None or not eventgrid_secret:
                raise ConfigError(f"answering needs public_url and ${EVENTGRID_SECRET_ENV}")
            self.answering = Answering(config, answerer, tokens, self.stats)
        self._secret = (eventgrid_secret or "").encode()
        media_url = self.answering.media_url if self.answering else str
        replicas = None
        if tokens is not None and config.replica_url is not None:
            key = ReplicaKey(tokens.key)
            replicas = Replicas(config.replica_url, key, counts=self.stats.replica_requests)
        self.reach = CallReach(self.answering, replicas, self.stats)
        deliver = self.reach.deliver_callback
        self.callbacks = CallbackEndpoint(tokens, self.stats, media_url, auth, deliver)

    @property
    def live(self) -> LiveCalls:
        """The calls whose media WebSocket this replica holds."""
        return self.reach.live

    @property
    def replicas(self) -> Replicas | None:
        """This replica among the others (None: `replica_url` unset)."""
        return self.reach.replicas

    def prepare_routes(self, config: Config) -> Callable[[], None]:
        """Load the processors of `config`'s routes (a reload); the function that switches
        new calls to them. Raises ConfigError, changing nothing, if one does not load. Calls
        already answered keep their route: a route the new table drops still takes the
        media its tokens name."""
        if self.load_processor is None:
            raise ConfigError("routes: this gateway cannot load processors again (restart it)")
        processors = route_processors(config, self.load_processor)

        def switch() -> None:
            self.config = config
            self.routes = routing.all_routes(config.routes)
            self.processors = {**self.processors, **processors}
            if self.answering is not None:
                self.answering.config = config

        return switch

    @property
    def auth(self) -> TokenChecker | None:
        return self.callbacks.auth

    def use_auth(self, auth: TokenChecker | None) -> None:
        self.callbacks.auth = auth

    def use_metrics(self, metrics: Metrics) -> None:
        """Export the counts and latencies through `metrics` (its control block)."""
        control = metrics.add_control()
        control.follow(self.stats.totals)
        if self.answering is not None:
            self.answering.answer_latency = control.answering.observe
            self.answering.media_latency = control.media_connecting.observe

    @property
    def max_body_bytes(self) -> int | None:
        """The webhook body cap; None when plain HTTP is not served (426 as before)."""
        return self.config.max_webhook_bytes if self.answering is not None else None

    # -- media --

    async def media(self, handshake: Handshake) -> MediaRoute | Reject:
        """The route, processor and call control a media WebSocket runs, or why it is
        refused. For a call answered by another replica (its home, named in the token), asks
        the home, which learns that this replica holds the call."""
        name, token = routing.media_target(handshake.target)
        if self.tokens is None:  # media only: the path picks the route, any other path the default
            if name is None:
                name = routing.DEFAULT_ROUTE
            elif name not in self.routes:
                return self._refuse("unknown_route", Reject(404, f"no route {name!r}"))
            return MediaRoute(name, self.processors[name])
        if name is None or name not in self.processors:  # a dropped route's calls go on
            return self._refuse("unknown_route", Reject(404, "no such media route"))
        try:
            grant = self.tokens.check(token, "media")
        except TokenRefused as exc:
            status = 401 if exc.reason == "missing" else 403
            return self._refuse(f"media_{exc.reason}", Reject(status, "call token refused"))
        correlation = handshake.headers.get("x-ms-call-correlation-id")
        other_call = correlation is not None and correlation != grant.correlation_id
        if grant.route != name or (other_call and not grant.dialled):
            return self._refuse("media_other_call", Reject(403, "call token is for another call"))
        try:
            control = await self.reach.control(grant, handshake.headers)
        except TokenRefused as exc:
            status = 410 if exc.reason == "call_over" else 403
            return self._refuse(f"media_{exc.reason}", Reject(status, str(exc)))
        live = LiveCall(grant.correlation_id, control)
        return MediaRoute(name, self.processors[name], control, live, self.reach.live)

    def _refuse(self, reason: str, reject: Reject) -> Reject:
        self.stats.refused[reason] += 1
        return reject

    # -- HTTP --

    async def respond(self, request: Handshake) -> HttpAnswer:
        """The answer to one plain HTTP request (never raises but for cancellation)."""
        url = urlsplit(request.target)
        query = parse_qs(url.query)
        if url.path == REPLICA_PATH and self.replicas is not None and request.method == "POST":
            return await self.reach.respond(request)
        if url.path not in (EVENTGRID_PATH, CALLBACK_PATH):
            return refused(self.stats, "not_found", text_answer(404, "no such endpoint"))
        allowed = ("OPTIONS", "POST") if url.path == EVENTGRID_PATH else ("POST",)
        if request.method not in allowed:
            answer = text_answer(405, "method not allowed")
            answer = attrs.evolve(answer, headers=(("allow", ", ".join(allowed)),))
            return refused(self.stats, "method", answer)
        if url.path == EVENTGRID_PATH:
            supplied = query.get("secret", [""])[-1].encode()
            if not hmac.compare_digest(supplied, self._secret):
                answer = text_answer(401, "wrong or missing secret")
                return refused(self.stats, "eventgrid_secret", answer)
            if request.method == "OPTIONS":
                return self._cloudevents_handshake(request.headers)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith(_JSON_TYPES):
            return refused(self.stats, "content_type", text_answer(415, "JSON bodies only"))
        try:
            events = parse_events(request.body)
            if url.path == EVENTGRID_PATH:
                return await self._eventgrid(request.headers, events)
            token = query.get("token", [None])[-1]
            return await self.callbacks.respond(request.headers, token, events)
        except BadBody as exc:
            return refused(self.stats, "bad_body", text_answer(400, f"bad body: {exc}"))

    def _cloudevents_handshake(self, headers: Mapping[str, str]) -> HttpAnswer:
        origin = headers.get("webhook-request-origin")
        if not origin:
            return refused(self.stats, "bad_body", text_answer(400, "no WebHook-Request-Origin"))
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
                return json_answer(200, {"validationResponse": code})
        calls = [(IncomingCall.parse(e.data), e.data) for e in events if e.type == INCOMING_CALL]
        if calls and self.answering is None:
            answer = text_answer(503, "answering is not configured")
            return refused(self.stats, "not_answering", answer)
        if self.answering is not None:
            await self.answering.answer_all(calls, received)
        return HttpAnswer(200)


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
    processors = route_processors(config, load_processor)
    if config.public_url is None:
        return ControlPlane(config, processors, load_processor=load_processor)
    from .answer import SdkAnswerer

    return ControlPlane(
        config,
        processors,
        answerer=SdkAnswerer.from_config(config, environ, **client_options),
        tokens=call_tokens(config, environ),
        eventgrid_secret=environ.get(EVENTGRID_SECRET_ENV),
        load_processor=load_processor,
    )


def call_tokens(config: Config, environ: Mapping[str, str]) -> CallTokens:
    """The call tokens of the replicas' shared key (`$ACS_GATEWAY_CALL_TOKEN_KEY`)."""
    key = environ.get(CALL_TOKEN_KEY_ENV, "")
    if len(key.encode()) < 32:
        raise ConfigError(f"public_url is set: ${CALL_TOKEN_KEY_ENV} must hold 32 bytes or more")
    return CallTokens(key.encode(), config.call_token_lifetime)


def route_processors(
    config: Config, load_processor: Callable[[str, Mapping[str, object]], Processor]
) -> dict[str, Processor]:
    """Each route's processor, loaded now, so bad options fail at start-up (or a reload):
    ConfigError names the route."""
    processors = {}
    for name, route in routing.all_routes(config.routes).items():
        processor = route.processor or config.processor
        options = (
            route.options if route.options is not None else config.processors.get(processor, {})
        )
        try:
            processors[name] = load_processor(processor, options)
        except ConfigError as exc:
            raise ConfigError(f"routes.{name}: {exc}") from None
        except Exception as exc:  # a user's processor factory: any failure refuses the table
            raise ConfigError(f"routes.{name}: processor {processor!r}: {exc!r}") from None
    return processors
