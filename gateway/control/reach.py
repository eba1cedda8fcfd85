"""Reaching a call's live state, here or on another replica.

Owns: the calls this replica holds (`LiveCalls`), the control handle of a media connection
(asked of the call's home when another replica answered it: `control`), where the callback
events that act on a live call go (`deliver_callback`, `deliver`), and the answers to the other
replicas' requests (`respond`, `POST /replicas`). Never: checks call tokens (the plane has
checked them before anything here runs), or decides what an event does to a call
(`gateway.control.live`). The design and its price are in docs/architecture.md ("Many
replicas").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from ..call.interface import CallControlHandle
from ..wire.handshake import Handshake
from .answering import Answering
from .events import Event
from .live import ACTS, ENDING, LiveCalls, kind_of
from .replicas import REPLICA_PATH, SIGNATURE_HEADER, Replicas, incoming_fields, incoming_from
from .replies import ControlStats, HttpAnswer, json_answer, refused, text_answer
from .tokens import CallGrant, TokenRefused

ENDS: Final = frozenset(ENDING)  # events after which a call's tokens take no media


class CallReach:
    """The live calls of one replica, and the way to those of the others (`replicas`)."""

    def __init__(
        self, answering: Answering | None, replicas: Replicas | None, stats: ControlStats
    ) -> None:
        self.answering, self.replicas, self.stats = answering, replicas, stats
        self.live = LiveCalls()

    async def control(
        self, grant: CallGrant, headers: Mapping[str, str]
    ) -> CallControlHandle | None:
        """The control handle of a media connection with a valid token (None: the gateway
        does not answer calls, or no call connection id is known). For a call whose home is
        another replica, claims the call there. Raises TokenRefused: "call_over" (the call's
        answer failed or timed out, or it ended), "other_call"."""
        if self.answering is None:
            return None
        connection_id = headers.get("x-ms-call-connection-id")
        home, replicas = grant.home, self.replicas
        if home is not None and replicas is not None and not replicas.is_own(home):
            return await self._claim(home, grant.correlation_id, connection_id)
        return self.answering.control(grant.correlation_id, connection_id)

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
        if reply.status == 403 and "detail" in reply.body:  # not a signature refusal
            raise TokenRefused("other_call", "call token is for another call connection")
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

    async def deliver_callback(self, grant: CallGrant, events: Sequence[Event]) -> None:
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

    async def respond(self, request: Handshake) -> HttpAnswer:
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
            holder, connection = fields.get("holder"), fields.get("connection")
            known = self.answering.answered.get(correlation_id)
            if known is not None and isinstance(connection, str):
                if known.connection_id not in (None, connection):  # before it is claimed
                    return json_answer(403, {"detail": "for another call connection"})
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
