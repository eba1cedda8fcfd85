"""The control plane: the webhooks on the media port, answering, and each call's route.

Owns: what a plain HTTP request to the gateway gets (`respond`): the Event Grid endpoint
(`/eventgrid`: both validation handshakes, IncomingCall answered on its route) and the callback
endpoint (`/callbacks`, `gateway.control.callbacks`); and what a media WebSocket runs (`media`):
its route's processor and, for a call this gateway answered, the call's control handle. Never:
reads sockets (`gateway.server.connection` hands over each parsed request and sends the
answer), or keeps per-call state a replica needs: everything rides in the call's tokens
(`gateway.control.tokens`). What it remembers of the calls it answered lately (the
IncomingCall's caller, callee and custom context, the call connection id) only adds to that.

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
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
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
from .live import ACTS, ENDING, LiveCall, LiveCalls, kind_of
from .replicas import (
    REPLICA_PATH,
    SIGNATURE_HEADER,
    ReplicaKey,
    Replicas,
    incoming_fields,
    incoming_from,
)
from .replies import ControlStats, HttpAnswer, json_answer, refused, text_answer
from .tokens import CallGrant, CallTokens, TokenRefused

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
ENDS: Final = frozenset(ENDING)  # events after which a call's tokens take no media


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
        self.callbacks = CallbackEndpoint(tokens, self.stats, media_url, auth, self._deliver)
        self.live = LiveCalls()  # the calls whose media WebSocket this replica holds
        self.replicas: Replicas | None = None
        if tokens is not None and config.replica_url is not None:
            self.replicas = Replicas(config.replica_url, ReplicaKey(tokens.key))

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
        if grant.route != name or (correlation is not None and correlation != grant.correlation_id):
            return self._refuse("media_other_call", Reject(403, "call token is for another call"))
        control = None
        if self.answering is not None:
            connection_id = handshake.headers.get("x-ms-call-connection-id")
            try:
                if grant.home is not None and self.replicas is not None:
                    if not self.replicas.is_own(grant.home):
                        control = await self._claim(grant.home, grant.correlation_id, connection_id)
                    else:
                        control = self.answering.control(grant.correlation_id, connection_id)
                else:
                    control = self.answering.control(grant.correlation_id, connection_id)
            except TokenRefused as exc:
                status = 410 if exc.reason == "call_over" else 403
                return self._refuse(f"media_{exc.reason}", Reject(status, str(exc)))
        live = LiveCall(grant.correlation_id, control)
        return MediaRoute(name, self.processors[name], control, live, self.live)

    async def _claim(
        self, home: str, correlation_id: str, connection_id: str | None
    ) -> CallControlHandle | None:
        """Tell the call's home that this replica holds its media; the call's control handle
        (with the IncomingCall data the home remembers). TokenRefused("call_over") when the
        home says the call's answer failed or the call has ended. An unreachable home, or one
        that no longer remembers the call, costs the handle its IncomingCall data only."""
        assert self.replicas is not None and self.answering is not None
        reply = await self.replicas.post(
            home,
            "media",
            {"c": correlation_id, "holder": self.replicas.own_url, "connection": connection_id},
        )
        if reply.status == 410:
            raise TokenRefused("call_over", str(reply.body.get("detail", "the call is over")))
        incoming = None
        if reply.status == 200:
            incoming = incoming_from(reply.body.get("incoming"))
            answered_id = reply.body.get("connection")
            if isinstance(answered_id, str) and answered_id:
                if connection_id not in (None, answered_id):
                    raise TokenRefused("other_call", "call token is for another call connection")
                connection_id = answered_id
        if not connection_id:
            return None
        return self.answering.answerer.control(connection_id, incoming)

    def _refuse(self, reason: str, reject: Reject) -> Reject:
        self.stats.refused[reason] += 1
        return reject

    # -- HTTP --

    async def respond(self, request: Handshake) -> HttpAnswer:
        """The answer to one plain HTTP request (never raises but for cancellation)."""
        url = urlsplit(request.target)
        query = parse_qs(url.query)
        if url.path == REPLICA_PATH and self.replicas is not None and request.method == "POST":
            return await self._from_replica(request)
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

    # -- live calls, across replicas --

    async def _deliver(self, grant: CallGrant, events: Sequence[Event]) -> None:
        """Callback events that act on a live call reach it, here or on the replica that
        holds it (through the call's home)."""
        acting = [{"type": e.type, "data": dict(e.data)} for e in events if kind_of(e.type) in ACTS]
        if acting:
            await self.deliver(grant.correlation_id, grant.home, acting)

    async def deliver(
        self,
        correlation_id: str,
        home: str | None,
        events: list[dict[str, Any]],
        *,
        origin: str | None = None,
    ) -> bool:
        """Apply `events` to the call if it is held here. The call's home (the replica that
        answered it) remembers how it ended and passes them to the replica holding it, unless
        they came from there (`origin`); any other replica passes them to the home. Whether
        a replica held the call."""
        held = False
        for event in events:
            held = self.live.act(correlation_id, kind_of(event["type"]), event["data"]) or held
        replicas, answering = self.replicas, self.answering
        if answering is not None and correlation_id in answering.answered:  # the call's home
            if any(kind_of(e["type"]) in ENDS for e in events):
                answering.ended(correlation_id)
            holder = answering.holder(correlation_id)
            if held or holder is None or replicas is None or replicas.is_own(holder):
                return held
            if origin is not None and holder.rstrip("/") == origin.rstrip("/"):
                return False  # the holder sent them: it has seen them
            return await self._forward(holder, correlation_id, events)
        if origin is not None or home is None or replicas is None or replicas.is_own(home):
            return held  # forwarded events go no further than the home and its holder
        if held and not any(kind_of(e["type"]) in ENDS for e in events):
            return held  # the home needs to hear only how the call ended
        return await self._forward(home, correlation_id, events) or held

    async def _forward(self, url: str, correlation_id: str, events: list[dict[str, Any]]) -> bool:
        assert self.replicas is not None
        fields = {"c": correlation_id, "events": events, "origin": self.replicas.own_url}
        reply = await self.replicas.post(url, "events", fields)
        return reply.body.get("held") is True

    async def _from_replica(self, request: Handshake) -> HttpAnswer:
        """`POST /replicas`: a signed operation from another replica."""
        assert self.replicas is not None
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not self.replicas.key.check(signature, REPLICA_PATH, request.body):
            return refused(self.stats, "replica_signature", text_answer(403, "not a replica"))
        try:
            fields = orjson.loads(request.body)
            operation, correlation_id = fields["op"], fields["c"]
            if not isinstance(correlation_id, str):
                raise TypeError("c")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return refused(self.stats, "bad_body", text_answer(400, "bad replica request"))
        if operation == "events" and isinstance(fields.get("events"), list):
            events = [
                e
                for e in fields["events"]
                if isinstance(e, dict)
                and isinstance(e.get("type"), str)
                and isinstance(e.get("data"), dict)
            ]
            origin = fields.get("origin")
            origin = origin if isinstance(origin, str) else ""
            held = await self.deliver(correlation_id, None, events, origin=origin)
            return json_answer(200, {"held": held})
        if operation == "media" and self.answering is not None:
            holder = fields.get("holder")
            try:
                answered = self.answering.claim(
                    correlation_id, holder if isinstance(holder, str) else None
                )
            except TokenRefused as exc:
                return json_answer(410, {"detail": str(exc)})
            if answered is None:
                return json_answer(404, {"detail": "no such call here"})
            return json_answer(
                200,
                {
                    "connection": answered.connection_id,
                    "incoming": incoming_fields(answered.incoming),
                },
            )
        return refused(self.stats, "bad_body", text_answer(400, "bad replica request"))

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

    key = environ.get(CALL_TOKEN_KEY_ENV, "")
    if len(key.encode()) < 32:
        raise ConfigError(f"public_url is set: ${CALL_TOKEN_KEY_ENV} must hold 32 bytes or more")
    return ControlPlane(
        config,
        processors,
        answerer=SdkAnswerer.from_config(config, environ, **client_options),
        tokens=CallTokens(key.encode(), config.call_token_lifetime),
        eventgrid_secret=environ.get(EVENTGRID_SECRET_ENV),
        load_processor=load_processor,
    )


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
