"""One connection, from the accepted stream to its close: `serve_connection`.

Owns: the steps of one connection, in order: the WebSocket handshake, screening (source
networks), authentication (ACS's token), admission (the call limits; the call's place reserved),
the accept, `gateway.call.run_call`, the accounting in `ServerStats`, and the close. Never:
listens, accepts or drains (`gateway.server.serve`), knows audio (`gateway.call`), or talks to
Prometheus (`gateway.ops.metrics` derives its counters from `ServerStats`).

`serve_connection(stream, context)` is the one entry point for a connection: the server's
accept loop runs it for every accepted stream, and tests run it over memory streams.

Pending handshakes: the accept loop counts the connection as pending before this runs
(`serve_connection(..., pending=True)`, bounded by `max_pending_handshakes`); the count ends
here as soon as the handshake does (admitted, refused, timed out, broken or cancelled).

Handshake checks, in order: the upgrade must complete within `handshake_timeout` (TLS included);
a source address outside `allowed_networks` is refused with HTTP 403; with `acs_resource_id`
set, ACS's token must pass `gateway.server.auth` within the same deadline (else HTTP 401, or 503
when the signing keys cannot be had); at `max_calls` live calls the upgrade is refused with
HTTP 503, and at `max_calls_per_source` calls from one address with 429, before it is accepted.
With a control plane (`context.control`), a plain HTTP request is a webhook, answered by it and
never a call, and the control plane picks the media connection's route and processor (or refuses
it: unknown route, or a missing or wrong call token, or a call that is over); a call it holds
(`MediaChoice.hold`) is ended when the control plane says so (a callback such as
`CallDisconnected`): the server closes the WebSocket, and the call ends as a hang-up.
Admission and the reservation of a call's place happen with no await between them (after the
token check, which may wait), so the limits hold however many handshakes race. Without a
control plane any path is accepted. The `x-ms-call-connection-id` and `x-ms-call-correlation-id`
headers tag every log line of the call.

Resource handling: the stream is closed (`aclose_forcefully`) before `serve_connection`
returns, whatever happened; a call still open when it is cancelled (the server drains) is
closed with 1001 first, unless the server stops at once (`close_on_cancel` false).
Error handling: one error boundary per connection. A peer's bad input ends at most its own
call; an unexpected exception is logged with the call's ids and counted in `calls_failed`; the
server and the other calls go on. Each connection is counted once: as a failed handshake, a
refusal, or an accepted call (and a gateway bug, if any, in `calls_failed`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Final

import attrs
import trio

from ..call.outcome import CallOutcome, CallTimings, EndReason
from ..call.pacer import Pacer
from ..call.run import run_call
from ..config import Config
from ..errors import CLOSE_GOING_AWAY, CLOSE_NORMAL
from ..logs import call_logger
from ..ops import systemd
from ..processors import CallStats, Processor
from ..records import Records, RecordSettings
from ..wire.sockets import peer_address, reset_on_close
from ..wire.websocket import ConnectionClosed, Handshake, Reject, SendTimeout, ServerWebSocket
from .admission import Admission
from .auth import AuthFailure, TokenChecker
from .routing import CallRouting, HeldCall, MediaChoice
from .stats import ServerStats

log = logging.getLogger("gateway.server")

_TOKEN: Final = re.compile(r"([?&]token=)[^&]*")  # a call token in a media URL: a credential
CLOSE_ON_CANCEL_TIMEOUT: Final = 1.0  # seconds for the 1001 close when calls are cancelled
ENDED_CALL_GRACE: Final = 10.0  # seconds a call ended by a callback may take to wind down

CallLog = logging.LoggerAdapter[logging.Logger]


def _admission_for(context: ServerContext) -> Admission:
    return Admission(context.config.allowed_networks)


@attrs.define(eq=False)
class ServerContext:
    """What every connection of one server is served with. `config` is read by each new
    connection (a reload replaces it); everything else lives as long as the server."""

    config: Config
    processor: Processor
    admission: Admission = attrs.field(default=attrs.Factory(_admission_for, takes_self=True))
    stats: ServerStats = attrs.field(factory=ServerStats)
    auth: TokenChecker | None = None  # None: no token check
    pacer: Pacer | None = None  # the server's one timer for every call's send task
    timings: CallTimings | None = None  # where calls report per-packet timings
    call_durations: Callable[[float], None] | None = None  # seconds from accept to the end
    changes: systemd.Changes = attrs.field(factory=systemd.Changes)  # live calls changed
    close_on_cancel: bool = True  # false once the server stops at once: no 1001 close
    records: Records = attrs.field(factory=Records)  # each call's recording, events, latencies
    control: CallRouting | None = None  # routes and webhooks; None: every call runs `processor`


@attrs.define
class _Place:
    """An admitted call's place: held from the admission to the end of the call."""

    source: str
    stats: CallStats
    admitted_at: float
    accepted: bool = False  # the 101 went out: a call, whose end is counted
    outcome: CallOutcome | None = None


async def serve_connection(
    stream: trio.abc.Stream, context: ServerContext, *, pending: bool = False
) -> CallOutcome | None:
    """Serve one accepted connection to its end: the call's outcome, or None when it never
    became a call (or the gateway failed). Never raises but for cancellation; closes `stream`.

    `pending`: the accept loop counted this connection as a pending handshake
    (`Admission.pending_refusal`); the count ends here, once it is admitted or refused."""
    config = context.config
    peer = peer_address(stream)
    source = source_of(peer)
    control = context.control
    ws = ServerWebSocket(
        stream,
        max_message_bytes=config.max_message_bytes,
        send_timeout=config.send_timeout,
        max_body_bytes=None if control is None else control.max_body_bytes,
    )
    place: _Place | None = None
    gateway_failed = False
    try:
        try:
            deadline = trio.current_time() + config.handshake_timeout
            handshake = await _read_handshake(ws, context, deadline, peer)
            if handshake is None:
                return None
            processor, route_name, call_control = context.processor, config.processor, None
            chosen: MediaChoice | None = None
            if control is not None:
                if not handshake.upgrade:  # a webhook: answered, never a call
                    reply = await control.respond(handshake)
                    await ws.respond(reply.status, reply.body, reply.content_type, reply.headers)
                    return None
                route = await control.media(handshake)
                if isinstance(route, Reject):
                    context.stats.auth_failed["route" if route.status == 404 else "call_token"] += 1
                    log.warning("refusing media connection from %s: %s", peer, route.reason)
                    await ws.reject(route)
                    return None
                route_name, processor, call_control = route.name, route.processor, route.control
                chosen = route
            calllog = call_logger(
                handshake.headers.get("x-ms-call-connection-id"),
                handshake.headers.get("x-ms-call-correlation-id"),
                peer,
            )
            calllog.debug("handshake: %s", _TOKEN.sub(r"\1...", handshake.target))
            place = await _admit(ws, handshake.headers, context, source, deadline, calllog)
        finally:
            if pending:  # admitted, refused, timed out, broken or cancelled: no longer pending
                context.admission.handshake_done(source)
        if place is None:
            return None
        calllog.debug("admitted: %d live call(s)", context.admission.reserved)
        await ws.accept()
        place.accepted = True
        context.stats.calls_accepted += 1
        calllog.info("accepted %s", _TOKEN.sub(r"\1...", handshake.target))  # not the call token
        run = partial(
            run_call,
            ws,
            handshake,
            processor,
            config.call_settings,
            calllog,
            pacer=context.pacer,
            stats=place.stats,
            timings=context.timings,
            observer=context.records.open(
                RecordSettings.from_config(config, route_name), handshake.headers, route_name
            ),
            control=call_control,
        )
        if chosen is None:
            place.outcome = await run()
        else:
            with chosen.hold() as held:
                place.outcome = await (run() if held is None else _run_held(ws, run, held, calllog))
        if place.outcome is None:
            return None
        _log_end(calllog, place.outcome)
        return place.outcome
    except ConnectionClosed as closed:
        # Only the handshake raises this (run_call does not): lost before or while the 101
        # went out. Counted here, so every connection is counted once.
        context.stats.handshake_failures["invalid"] += 1
        log.debug("connection from %s closed during the handshake: %s", peer, closed)
        return None
    except Exception:
        gateway_failed = True
        log.exception("call from %s failed in the gateway", peer)
        return None
    finally:
        if place is not None:
            _release(context, place, gateway_failed)
        elif gateway_failed:
            context.stats.calls_failed += 1
        await _close(ws, stream, context, admitted=place is not None)


async def _run_held(
    ws: ServerWebSocket,
    run: Callable[[], Awaitable[CallOutcome]],
    held: HeldCall,
    calllog: CallLog,
) -> CallOutcome | None:
    """Run the call; when the control plane says it is over (`held.ending`), close the
    WebSocket as ACS would: the call then ends as a hang-up (its processor sees the end of
    `packets` and gets `hangup_grace`). A peer that never answers the close is given up
    after `ENDED_CALL_GRACE`: the call is cancelled (None)."""
    outcome: CallOutcome | None = None
    async with trio.open_nursery() as nursery:

        async def end_when_told() -> None:
            await held.ending.wait()
            calllog.info("ending the call: %s", held.reason)
            await ws.close(CLOSE_NORMAL, held.reason[:120])
            await trio.sleep(ENDED_CALL_GRACE)
            nursery.cancel_scope.cancel()

        nursery.start_soon(end_when_told)
        outcome = await run()
        nursery.cancel_scope.cancel()
    return outcome


def source_of(peer: str) -> str:
    """The source address of `host:port` (what the per-source limits count by)."""
    return peer.rpartition(":")[0].strip("[]")


async def _read_handshake(
    ws: ServerWebSocket, context: ServerContext, deadline: float, peer: str
) -> Handshake | None:
    """The upgrade request by `deadline`; None (counted) when it did not come in time."""
    with trio.move_on_at(deadline):
        return await ws.read_handshake()
    context.stats.handshake_failures["timeout"] += 1
    log.info("handshake from %s timed out", peer)
    return None


async def _admit(
    ws: ServerWebSocket,
    headers: Mapping[str, str],
    context: ServerContext,
    source: str,
    deadline: float,
    calllog: CallLog,
) -> _Place | None:
    """Screen, authenticate and admit: the call's place, reserved; or None, refused."""
    refusal = context.admission.screen(source)
    if refusal is None and context.auth is not None:
        reject = await _authenticate(context, headers, deadline, calllog)
        if reject is not None:
            await ws.reject(reject)
            return None
    if refusal is None:
        config = context.config  # the limits as they are now (a reload may have moved them)
        # checks and takes the place at once: no await between
        refusal = context.admission.admit(source, config.max_calls, config.max_calls_per_source)
    if refusal is not None:
        context.stats.refused_by[refusal.reason] += 1
        calllog.warning("refusing the call (%s): %s", refusal.reason, refusal.reject.reason)
        await ws.reject(refusal.reject)
        return None
    context.changes.note()
    return _Place(source, context.stats.call_started(), trio.current_time())


async def _authenticate(
    context: ServerContext, headers: Mapping[str, str], deadline: float, calllog: CallLog
) -> Reject | None:
    """Check ACS's token by the handshake deadline; counts and logs a failure's reason."""
    assert context.auth is not None
    failure = None
    with trio.move_on_at(deadline):
        try:
            await context.auth.check(headers)
        except AuthFailure as exc:
            failure = exc
        else:
            return None
    if failure is None:
        failure = AuthFailure("keys_unavailable", "no signing keys by the handshake deadline")
    context.stats.auth_failed[failure.reason] += 1
    calllog.warning("refusing the call (%d): token %s", failure.status, failure)
    body = "authentication failed" if failure.status == 401 else "signing keys unavailable"
    return Reject(failure.status, body)


def _log_end(calllog: CallLog, outcome: CallOutcome) -> None:
    calllog.info(
        "call ended by %s (close code %s): %d frames in, %d dropped, %d messages out",
        outcome.ended_by,
        outcome.close_code,
        outcome.stats.audio_frames_in,
        outcome.stats.audio_frames_dropped,
        outcome.stats.messages_out,
    )


def _release(context: ServerContext, place: _Place, gateway_failed: bool) -> None:
    """The call is over (or never started): free its place and account for it."""
    context.admission.release(place.source)
    context.changes.note()
    outcome = place.outcome
    if not place.accepted:
        context.stats.call_withdrawn(place.stats)
        if gateway_failed:
            context.stats.calls_failed += 1
        return
    if gateway_failed:
        ended_by = EndReason.GATEWAY_ERROR
    else:  # no outcome: the call was cancelled (the server stopped) before run_call returned
        ended_by = EndReason.HANGUP if outcome is None else outcome.ended_by
    context.stats.call_ended(
        place.stats,
        ended_by,
        failed=gateway_failed or (outcome is not None and outcome.error is not None),
        call=None if outcome is None else outcome.call,
    )
    if context.call_durations is not None:
        context.call_durations(trio.current_time() - place.admitted_at)


async def _close(
    ws: ServerWebSocket, stream: trio.abc.Stream, context: ServerContext, *, admitted: bool
) -> None:
    """Close the connection: 1001 for a call still open (the server drains), then the stream."""
    try:
        if isinstance(ws.closed, SendTimeout):
            reset_on_close(stream)  # drop what the kernel still holds for a stuck peer
        if ws.closed is None and admitted and context.close_on_cancel:
            with trio.CancelScope(
                shield=True, deadline=trio.current_time() + CLOSE_ON_CANCEL_TIMEOUT
            ):
                await ws.close(CLOSE_GOING_AWAY, "server shutting down")
    finally:
        await trio.aclose_forcefully(stream)
