"""The realtime bridge: one call <-> one realtime model session, over `gateway.wire.client`.

Owns: the upstream connection's life (connect, session.update, keepalive, reconnect or give
up), moving audio both ways, and acting on barge-in. Never: wire spellings (`protocol`),
option parsing (`options`), or anything that outlives the call.

Tasks (all in one nursery inside the processor, so all end with the call):
- caller -> model: `hear` takes each of the caller's frames as it comes, without waiting: in
  the call's receive task (the processor's inline audio handler), or, with `speakers = "mix"`
  or when a wrapping processor does not pass the handler on, from `call.packets` in the
  processor's own task (which also reads the keys). It chooses whom the model hears
  (`speakers`), feeds the local VAD, and `uplink` resamples to 24 kHz with state (or, for a
  24 kHz call, passes ACS's base64 straight through) and batches frames into the model's input
  buffer appends. A barge-in the VAD suspects stops (or pauses) the bot right there, so
  stop-audio never waits behind the model's socket. Each append goes to the `outbox`, which
  writes it to the model's socket right there when that overtakes nothing, and otherwise
  queues it (bounded), with each barge-in the model must be told of, for the sender task to
  send in order. The caller's first words wait there while the first session opens; what
  does not fit is dropped and counted. Silent frames are sent too, so the model's VAD sees
  continuous time. Between sessions frames are dropped and counted (`upstream_audio_dropped`).
  When ACS hangs up, the packets end, the sender sends what is queued and the uplink's last
  frames, then the nursery is cancelled and the upstream socket closed.
- upstream: connects, then reads model events. Control events are handled at once, in this
  task, so a barge-in is never queued behind audio: on `input_audio_buffer.speech_started`
  (with `interruption = "pause"`: paused at once, then stopped once `interruption` confirms
  it) the player is stopped (queued audio dropped, stop-audio sent to ACS) before anything is
  sent upstream, then `response.cancel` and `conversation.item.truncate` (to the player's count of
  what was released of that item) or `conversation.item.delete` go to the model.
- tool calls: each function call the model makes runs in a task of its own (`tool_calls`),
  answered on the session it came from; the reader never waits for a tool.
- greeting and keys: when the call's first session is ready, the `greeting` response is asked
  for; with `dtmf_to_model`, a key press stops the bot like speech and `dtmf` tells the model.
- feeder (`downlink`): the reader plays a delta itself when the player has room and nothing
  waits ahead of it; otherwise the delta goes through a queue bounded in seconds of audio, to
  the feeder task, because `play()` blocks while the player's queue is full and the reader
  must stay free for barge-in. Deltas queued before a barge-in are discarded (counted in
  `upstream_audio_discarded`).

- rollover planner (`sessions.Rollover`): before a session reaches `session_max_s` it opens the
  next one in its own task and, between turns, switches the caller's audio to it; `_upstream`
  then runs it as the active session. Every new session is told the conversation so far
  (`history`).

Failures: refused, dropped, silent (no pong within `keepalive_timeout`), or a fatal `error`
event. Each is logged with the call's ids and counted (`upstream_errors`); then the next
session takes over at once if one is ready, or a new session after a capped exponential
back-off (`on_upstream_failure = "reconnect"`, at most `max_reconnects` failures in a row), or
the call is ended normally (`"hangup"`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from ...acs.packets import AudioData, DtmfData
from ...audio.vad import WebRtcVad
from ...call.interface import Call, CallStats
from ...errors import ConnectionClosed
from . import protocol, upstream
from .conversation import Conversation
from .downlink import Downlink
from .dtmf import DtmfRelay
from .history import History
from .interruption import Interruptions
from .options import RealtimeOptions
from .outbox import Outbox
from .protocol import (
    AudioDelta,
    AudioDone,
    MalformedEvent,
    ResponseCreated,
    ResponseDone,
    SessionReady,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
    UpstreamError,
)
from .sessions import ROLLED_OVER, Rollover, Standby, Turns, Upstream
from .speakers import Speakers
from .tool_calls import ToolCalls, ToolSession
from .tools import Toolbox
from .uplink import Uplink

CLOSE_TIMEOUT: Final = 1.0  # seconds for the upstream closing handshake when the call ends


class Bridge:
    """One call's bridge to the model. `await Bridge(call, options).run()`."""

    def __init__(
        self, call: Call, options: RealtimeOptions, toolbox: Toolbox | None = None
    ) -> None:
        assert call.player is not None and call.audio is not None
        self.call = call
        self.player = call.player
        self.options = options
        self.stats = call.stats
        self.log = call.log
        rate = call.audio.sample_rate
        # the call's own where the provider takes it: no resampling either way
        self.model_rate = model_rate = options.model_rate_for(rate)
        # caller -> model: resampled (or passed through), batched
        self.uplink = Uplink(rate, options.uplink_batch_frames, model_rate)
        # not a method of self: no cycle (see `history` below)
        self._malformed = functools.partial(_malformed, call.stats, call.log)
        self.downlink = Downlink(  # model -> caller
            self.player, rate, call.stats, self._malformed, model_rate
        )
        self.vad = (
            WebRtcVad(
                rate,
                aggressiveness=options.local_vad_aggressiveness,
                min_speech_ms=options.local_vad_min_speech_ms,
            )
            if options.local_vad
            else None
        )
        self.conversation = Conversation(self.player.released_ms, model_rate)
        self.speakers = Speakers(call, options.speakers)
        self.interruptions = Interruptions(
            call,
            options.interruption,
            confirm_ms=options.interruption_confirm_ms,
            min_ms=options.interruption_min_ms,
            transcribed=options.transcription is not None,
            barge_in=self._barge_in,
            stop=self._stop_bot,
            send=self._send_events if options.gateway_responds else None,
            audible=self._bot_audible,
            vad=self.vad,
        )
        self.ws: Upstream | None = None  # None: no session now
        self.history = History(
            self.player.released_ms,
            max_items=options.history_max_items,
            max_bytes=options.history_max_bytes,
            on_drop=functools.partial(_turn_forgotten, call.stats),  # not self: no cycle
            model_rate=model_rate,
        )
        self.turns = Turns()
        self.rollover = Rollover(
            session_max_s=options.session_limit_s,
            before_s=options.rollover_before_s,
            gap_s=options.rollover_gap_ms / 1000,
            setup_timeout_s=options.connect_timeout,
            closed=ConnectionClosed,
        )
        self._reading: trio.CancelScope | None = None  # the active session's reader
        self._switched_to: Standby | None = None  # a planned switch's session, to run next
        settings = options.session_settings
        if toolbox is None:
            toolbox = Toolbox.from_options(
                options.tools, options.call_tools, options.transfer_targets, options.tool_timeout_ms
            )
        self.tool_calls = ToolCalls(
            call,
            toolbox,
            functools.partial(self.history.told, "system"),  # history: no cycle
        )
        if self.tool_calls.offered:  # the user's tools, or call control on an answered call
            settings = attrs.evolve(settings, extra={**self.tool_calls.offered, **settings.extra})
        self.session_update = protocol.session_update(settings, options.dialect, model_rate)
        self._tasks: trio.Nursery | None = None  # the bridge's nursery, for tool calls
        self.greeting = options.greeting_instructions  # None: the caller speaks first
        self.dtmf = (
            DtmfRelay(options.dtmf_wait_ms / 1000, self.log) if options.dtmf_to_model else None
        )
        self.closing = False  # the call is ending: a closed upstream is not a failure
        self._first_attempt = trio.Event()  # the first session is up, or failed
        # caller -> model: `hear` batches and writes or queues, `_send_caller` sends the queue
        self.outbox = Outbox(options.uplink_batch_frames, call.stats)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.interruptions.close()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            nursery.start_soon(self._upstream, nursery.cancel_scope)
            nursery.start_soon(self.rollover.run, nursery, self, self._next_session_failed)
            nursery.start_soon(self.downlink.feed)
            if self.dtmf is not None:
                nursery.start_soon(self.dtmf.run, self._tell)
            nursery.start_soon(self.interruptions.watch)
            await self._forward_caller()
            # ACS hung up: close the upstream now (one round trip for the closing handshake,
            # while its reader still runs), then end every task.
            self.closing = True
            ws = self.ws
            if ws is not None:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose()
            nursery.cancel_scope.cancel()

    # -- caller -> model --

    def hear(self, packet: AudioData) -> bool:
        """One frame of the caller's audio, as it comes: from the call's receive task (the
        inline audio handler) or from `call.packets`. Chosen (`speakers`), watched by the local
        VAD (which stops or pauses the bot here) and batched, without waiting; each append
        event, and each barge-in the model must be told of, goes to the outbox (written at
        once, or sent in order by `_send_caller`). Always True: a frame the bridge cannot send
        is counted in `upstream_audio_dropped`."""
        if not self.speakers.hears(packet):
            return True
        vad = self.vad
        if vad is not None:
            if vad.feed(packet.pcm) and self._bot_audible():
                self.log.info("local VAD: caller speaking; barge-in before the model reacts")
                self.call.observer.note("speech_started", by="vad")
                if self.interruptions.heard_now():
                    self.outbox.barge_in()
            if vad.ended:
                self.call.observer.note("turn_ended", by="vad")
        if self.ws is None and self._first_attempt.is_set():  # between sessions
            self.stats.upstream_audio_dropped += 1
            return True
        message = self.uplink.add(packet)
        if message is not None:
            self.outbox.append(self.ws, message, self.uplink.frames)
        return True

    async def _forward_caller(self) -> None:
        """The processor's own task: the call's packets until ACS hangs up (audio, unless it
        came inline, and keys), while `_send_caller` sends what `hear` batched."""
        speakers = self.speakers  # unmixed streams: whom the model hears (or their mix)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_caller)
            with self.outbox:  # closed when ACS hangs up: what is queued goes, then the rest
                async for packet in speakers.packets(self.call.packets):
                    if type(packet) is AudioData:
                        self.hear(packet)
                    elif type(packet) is DtmfData and self.dtmf is not None:
                        # Keys wait for the first session, as the caller's first words do.
                        await self._first_attempt.wait()
                        await self._key_pressed(packet)

    async def _send_caller(self) -> None:
        """The caller's audio that the outbox queued, to the model in the order `hear` batched
        it. The first words wait there while the first session opens."""
        await self._first_attempt.wait()
        await self.outbox.send(self._send_audio, self._tell_interrupted)
        message = self.uplink.flush()  # the caller's last words, before the close
        if message is not None:
            await self._send_audio(message, self.uplink.frames)

    async def _send_audio(self, message: str, frames: int) -> None:
        ws = self.ws
        if ws is None:
            self.stats.upstream_audio_dropped += frames
            return
        try:
            await ws.send_message(message)
        except ConnectionClosed:
            self.stats.upstream_audio_dropped += frames  # the upstream task sees it

    # -- barge-in --

    def _bot_audible(self) -> bool:
        player = self.player
        return (
            self.conversation.responding
            or player.paused
            or player.playout.queued_bytes > 0
            or player.playout.buffered_ms(trio.current_time()) > 0
        )

    async def _barge_in(self) -> None:
        """Stop the player first (stop-audio to ACS is owed from this instant), then tell the
        model what the caller heard."""
        self._stop_bot()
        await self._tell_interrupted()

    def _stop_bot(self) -> None:
        if self._bot_audible():
            self.player.stop()
            self.stats.barge_ins += 1
        self.downlink.discard()  # what the model sent before this moment never plays

    async def _tell_interrupted(self) -> None:
        """The model's response is cancelled and its item cut to what the caller heard."""
        await self._send_events(self.conversation.interrupt())

    async def _send_events(self, events: list[str]) -> None:
        """Client events for the session, if one is up (a closed one: the reader sees it)."""
        ws = self.ws
        if ws is not None:
            for event in events:
                try:
                    await ws.send_message(event)
                except ConnectionClosed:
                    return

    # -- the bot speaks first; keys pressed --

    async def _greet(self, ws: Upstream) -> None:
        """The first session is ready: the bot's first response, before the caller speaks."""
        instructions, self.greeting = self.greeting, None  # once a call, not per session
        if instructions is not None:
            self.call.observer.note("greeting")
            await send_events(ws, [protocol.create_response(instructions)])

    async def _key_pressed(self, packet: DtmfData) -> None:
        """A key interrupts the bot like speech does; the model is told after the last key."""
        if self._bot_audible():
            self.call.observer.note("speech_started", by="dtmf")
            await self._barge_in()
        assert self.dtmf is not None
        self.dtmf.press(packet.tone)

    async def _tell(self, text: str) -> None:
        ws = self.ws
        if ws is None:
            self.log.warning("no model session: not told %r", text)
            return
        self.history.told("user", text)  # for a next session's record of the call
        await send_events(ws, [protocol.user_text(text), protocol.create_response()])

    # -- model -> caller --

    async def _model_audio(self, event: AudioDelta | AudioDone) -> None:
        """Bookkeeping for the model's audio, then to the player (a cancelled response's: not)."""
        conversation = self.conversation
        if type(event) is AudioDone:
            conversation.audio_done(event.item_id)
            await self.downlink.queue(event.item_id, None)
            return
        assert type(event) is AudioDelta
        if conversation.audio(event, protocol.audio_bytes(event.audio)):
            await self.downlink.queue(event.item_id, event.audio)
        else:
            self.stats.upstream_audio_discarded += protocol.audio_bytes(event.audio)

    async def _read_events(self, ws: Upstream) -> str:
        """Read the model until the session fails; returns why."""
        conversation_ready = False
        conversation = self.conversation
        tool_session = ToolSession(  # refers to this session, not to the bridge: no cycle
            functools.partial(send_events, ws), lambda: conversation.responding
        )
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as closed:
                return f"upstream closed the session ({closed.code})"
            try:
                event = protocol.parse(message)
            except MalformedEvent as exc:
                self._malformed(f"a malformed event: {exc}")
                continue
            self._remember(event)
            match event:
                case AudioDelta() | AudioDone():
                    await self._model_audio(event)
                case SpeechStarted():
                    self.call.observer.note("speech_started", by="model")
                    await self.interruptions.suspected(event)
                case SpeechStopped():
                    self.call.observer.note("turn_ended", by="model")
                    await self.interruptions.speech_stopped(event)
                case Transcript(who=who, text=text, item_id=item_id):
                    self.call.observer.note("transcript", who=who, text=text, item_id=item_id)
                    if who == "caller":
                        await self.interruptions.caller_transcript(text, item_id)
                case ToolCall():
                    assert self._tasks is not None
                    self.tool_calls.start(self._tasks, tool_session, event)
                case ResponseCreated(response_id=response_id):
                    await self.interruptions.response_created()
                    self.conversation.response_created(response_id)
                case ResponseDone(response_id=response_id, status=status):
                    self.conversation.response_done(response_id)
                    await self.tool_calls.response_done(tool_session, response_id, status)
                case SessionReady(updated=True):
                    conversation_ready = True
                    await self._greet(ws)
                case UpstreamError():
                    if event.fatal or not conversation_ready:
                        return f"upstream error {event.type}/{event.code}: {event.message}"
                    self.stats.upstream_errors["error_event"] += 1
                    self.log.warning(
                        "upstream error event %s/%s: %s", event.type, event.code, event.message
                    )

    # -- the upstream connection --

    def _new_conversation(self) -> None:
        """A fresh session has no record of the old one's items; audio already received from
        the old one still plays (it waits in `downlink`) unless the caller barges in."""
        self.conversation = Conversation(self.player.released_ms, self.model_rate)

    async def _upstream(self, call_scope: trio.CancelScope) -> None:
        options = self.options
        failures = 0
        standby: Standby | None = None  # the next session, set up in the background
        history_sent = False  # to `standby`, by a planned switch
        while True:
            started = trio.current_time()
            if standby is None and self._switched_to is not None:  # switched during a back-off
                standby, self._switched_to, history_sent = self._switched_to, None, True
            if standby is None:
                reason = await self._session()
            else:
                reason = await self._take_over(standby, send_history=not history_sent)
            self._first_attempt.set()
            if self.closing:
                return
            standby, self._switched_to = self._switched_to, None
            history_sent = standby is not None
            if reason != ROLLED_OVER:
                self.stats.upstream_errors["session_failed"] += 1
                standby = standby or self.rollover.claim()
            if standby is not None:  # the next session is ready: it takes over at once
                self.stats.session_rollovers += 1
                self.log.info("realtime model session: the next one takes over (%s)", reason)
                self.call.observer.note("rollover", reason=reason)
                continue
            self._new_conversation()
            if trio.current_time() - started > options.keepalive_interval:
                failures = 0  # it worked for a while: this is a new streak
            failures += 1
            if options.on_upstream_failure == "hangup" or failures > options.max_reconnects:
                self.log.error("realtime model session failed (%s); ending the call", reason)
                call_scope.cancel()
                return
            delay = min(options.backoff_max_ms, options.backoff_initial_ms * 2 ** (failures - 1))
            self.log.warning(
                "realtime model session failed (%s); new session in %d ms (attempt %d of %d)",
                reason,
                delay,
                failures,
                options.max_reconnects,
            )
            self.stats.upstream_reconnects += 1
            self.call.observer.note("reconnect", reason=reason, attempt=failures, delay_ms=delay)
            await trio.sleep_until(trio.current_time() + delay / 1000)

    async def _session(self, use: Callable[[Upstream], Awaitable[str]] | None = None) -> str:
        """Run one upstream session until it fails; returns why. The socket is closed when
        this returns or is cancelled."""
        opened_at = trio.current_time()  # the service counts the session's life from here
        try:
            ws = await upstream.open_upstream(self.options)
        except upstream.Unavailable as exc:
            return exc.reason
        try:
            return await (use or functools.partial(self._live, opened_at=opened_at))(ws)
        finally:
            await ws.abort()  # `_active` has let go of it

    # -- one session's life, whatever the transport --

    async def _live(self, ws: Upstream, opened_at: float) -> str:
        """Set a new session up (the conversation so far re-created in it) and run it."""
        try:
            await ws.send_message(self.session_update)
            for event in self.history_events():
                await ws.send_message(event)
        except ConnectionClosed:
            return "upstream closed the session during set-up"
        return await self._active(ws, opened_at)

    async def _take_over(self, standby: Standby, *, send_history: bool) -> str:
        """Run the next session, set up in the background, as the active one."""
        try:
            if send_history:
                for event in self.history_events():
                    await standby.ws.send_message(event)
            return await self._active(standby.ws, standby.opened_at)
        except ConnectionClosed:
            return "upstream closed the session during set-up"
        finally:
            standby.released.set()

    async def _active(self, ws: Upstream, opened_at: float) -> str:
        """Run the session the caller talks to until it fails (why) or the next one takes over;
        `opened_at`: when it began to open (a next session may have waited since)."""
        if self.ws is not ws:
            self._new_conversation()
            self.ws = ws
        self._first_attempt.set()
        self.log.info("realtime model session open: %s", self.options.url)
        self.call.observer.note("session", state="open")
        self.rollover.session_active(opened_at)
        failure: list[str] = []
        try:
            with trio.CancelScope() as self._reading:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._keepalive, ws, inner.cancel_scope, failure)
                    failure.append(await self._read_events(ws))
                    inner.cancel_scope.cancel()
            return failure[0] if failure else ROLLED_OVER
        except ConnectionClosed:
            return "upstream closed the session"
        finally:
            self._reading = None
            if self.ws is ws:
                self.ws = None  # the socket's owner closes it
                # The caller's audio held for this session's next event never reaches it, and
                # must not reach the next one late, after the gap.
                self.stats.upstream_audio_dropped += self.uplink.discard()

    # -- rollover's host: see `sessions` --

    async def open_session(self, use: Callable[[Upstream], Awaitable[str]]) -> str:
        return await self._session(use)

    def between_turns(self) -> bool:
        return self.turns.quiet(trio.current_time()) and not self._bot_audible()

    def history_events(self) -> list[str]:
        return self.history.events(self.options.dialect)

    def switch(self, standby: Standby) -> None:
        self._switched_to = standby
        self._new_conversation()
        self.ws = standby.ws  # the caller's next frame goes to the new session
        if self._reading is not None:
            self._reading.cancel()

    def _next_session_failed(self, reason: str) -> None:
        self.stats.upstream_errors["standby_failed"] += 1
        self.log.warning("the next realtime model session failed (%s); keeping this one", reason)
        self.call.observer.note("standby_failed", reason=reason)

    def _remember(self, event: protocol.ServerEvent) -> None:
        self.history.see(event)
        self.turns.see(event)

    async def _keepalive(self, ws: Upstream, scope: trio.CancelScope, failure: list[str]) -> None:
        """A session that answers no ping within `keepalive_timeout` has gone silent."""
        options = self.options
        deadline = trio.current_time()
        while True:
            deadline += options.keepalive_interval
            await trio.sleep_until(deadline)
            with trio.move_on_after(options.keepalive_timeout) as waiting:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return  # the reader reports it
            if waiting.cancelled_caught:
                failure.append(f"upstream went silent (no pong in {options.keepalive_timeout} s)")
                scope.cancel()
                return


def _malformed(stats: CallStats, log: logging.LoggerAdapter[logging.Logger], what: str) -> None:
    """Counted every time; logged at WARNING the first time in a call, then at DEBUG, so a
    model in a bad state cannot flood the log (and the event loop) of every call."""
    errors = stats.upstream_errors
    level = logging.DEBUG if errors["malformed_event"] else logging.WARNING
    errors["malformed_event"] += 1
    log.log(level, "the model sent %s", what)


def _turn_forgotten(stats: CallStats) -> None:
    stats.history_turns_dropped += 1


async def send_events(ws: Upstream, events: list[str]) -> bool:
    """Send events on one session; False if it is gone."""
    try:
        for event in events:
            await ws.send_message(event)
    except ConnectionClosed:
        return False
    return True
