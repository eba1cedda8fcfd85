"""The server's counts: the one place where connections and calls are counted.

Owns: every server-wide count (calls accepted, refused, failed and ended; handshake and token
failures; the per-call counts of ended calls) and the live calls' own `CallStats`. Never: talks
to Prometheus. `gateway.ops.metrics` derives its counters from `totals()` at each flush (live
calls included), so every event is counted once, here, and `server.stats` and `/metrics` agree.

A call's counts move from `live` into the totals in `call_ended`, with no await between, so a
total seen with the live calls added never goes back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Final

import attrs

from ..call.outcome import EndReason
from ..ops.metrics import Totals
from ..processors import Call, CallStats
from .admission import REFUSAL_STATUS
from .auth import AuthFailure


@attrs.define
class ServerStats:
    """Server-wide counters (exported as metrics). The per-call counts are those of ended calls;
    `live` holds the counts of calls still going."""

    calls_accepted: int = 0
    calls_failed: int = 0  # a processor raised (even after a hang-up), or a gateway bug
    audio_frames_in: int = 0
    audio_frames_dropped: int = 0
    messages_out: int = 0
    stop_audio_sent: int = 0
    protocol_errors: Counter[str] = attrs.field(factory=Counter)
    ended_by: Counter[str] = attrs.field(factory=Counter)  # every accepted call, once
    refused_by: Counter[str] = attrs.field(factory=Counter)  # admission refusals, by reason
    auth_failed: Counter[str] = attrs.field(factory=Counter)  # by AuthFailure.reason
    frames_flood_dropped: int = 0
    handshake_failures: Counter[str] = attrs.field(factory=Counter)  # timeout, invalid
    # Closed unread at accept (max_pending_handshakes[_per_source], out of descriptors).
    connections_refused: Counter[str] = attrs.field(factory=Counter)
    accept_errors: Counter[str] = attrs.field(factory=Counter)  # accept() failed, by errno name
    upstream_errors: Counter[str] = attrs.field(factory=Counter)  # by kind
    tool_calls: Counter[str] = attrs.field(factory=Counter)  # a model's tool calls, by outcome
    realtime: Counter[str] = attrs.field(factory=Counter)  # realtime bridges' events (below)
    packets_unread: int = 0  # still in a call's inbound queue when it ended
    # Seconds of audio a processor played that never reached ACS, by reason.
    outbound_dropped_seconds: dict[str, float] = attrs.field(factory=dict)
    _live: dict[int, CallStats] = attrs.field(factory=dict, repr=False, eq=False, alias="_live")

    @property
    def calls_refused(self) -> int:
        """Refused by admission (403/429/503) before the upgrade; token failures are apart."""
        return sum(self.refused_by.values())

    @property
    def handshakes_failed(self) -> int:
        """Timed out, or not a WebSocket upgrade."""
        return sum(self.handshake_failures.values())

    @property
    def live(self) -> Collection[CallStats]:
        """The counts of the calls still going."""
        return self._live.values()

    def totals(self) -> Totals:
        """Every count as a total since the start, the live calls' counts included (what the
        metrics show)."""
        frames_in, frames_out = self.audio_frames_in, self.messages_out - self.stop_audio_sent
        dropped, stops, flooded = (
            self.audio_frames_dropped,
            self.stop_audio_sent,
            self.frames_flood_dropped,
        )
        errors, upstream = Counter(self.protocol_errors), Counter(self.upstream_errors)
        tools, realtime = Counter(self.tool_calls), Counter(self.realtime)
        for s in self._live.values():
            _count_realtime(realtime, s)
            frames_in += s.audio_frames_in
            frames_out += s.messages_out - s.stop_audio_sent  # messages_out counts stops too
            dropped += s.audio_frames_dropped
            stops += s.stop_audio_sent
            flooded += s.frames_flood_dropped
            if s.protocol_errors:
                errors.update(s.protocol_errors)
            if s.upstream_errors:
                upstream.update(s.upstream_errors)
            if s.tool_calls:
                tools.update(s.tool_calls)
        refused: Counter[str] = Counter()
        for reason, n in self.refused_by.items():
            refused[str(REFUSAL_STATUS[reason])] += n
        for reason, n in self.auth_failed.items():
            refused[str(AuthFailure(reason, "").status)] += n  # the status it refuses with
        return Totals(
            live_calls=len(self._live),
            calls_accepted=self.calls_accepted,
            calls_failed=self.calls_failed,
            frames_in=frames_in,
            frames_out=frames_out,
            inbound_dropped=dropped,
            stop_audio_sent=stops,
            flood_dropped=flooded,
            unread_at_end=self.packets_unread,
            calls_ended=self.ended_by,
            calls_refused=refused,
            handshakes_failed=self.handshake_failures,
            auth_failed=self.auth_failed,
            protocol_errors=errors,
            upstream_errors=upstream,
            tool_calls=tools,
            realtime=realtime,
            outbound_dropped=self.outbound_dropped_seconds,
            connections_refused=self.connections_refused,
            accept_errors=self.accept_errors,
        )

    def call_started(self) -> CallStats:
        """A call was admitted: the counts it keeps while live."""
        stats = CallStats()
        self._live[id(stats)] = stats
        return stats

    def call_withdrawn(self, stats: CallStats) -> None:
        """An admitted call that never started: its upgrade was lost before the 101 went out
        (counted as a failed handshake, not as a call that ended)."""
        del self._live[id(stats)]

    def call_ended(
        self, stats: CallStats, ended_by: EndReason, *, failed: bool, call: Call | None = None
    ) -> None:
        """Move an ended call's counts into the totals; `call`: its player's unsent audio."""
        del self._live[id(stats)]
        self.audio_frames_in += stats.audio_frames_in
        self.audio_frames_dropped += stats.audio_frames_dropped
        self.messages_out += stats.messages_out
        self.stop_audio_sent += stats.stop_audio_sent
        self.frames_flood_dropped += stats.frames_flood_dropped
        self.packets_unread += stats.packets_unread
        self.protocol_errors.update(stats.protocol_errors)
        self.upstream_errors.update(stats.upstream_errors)
        self.tool_calls.update(stats.tool_calls)
        _count_realtime(self.realtime, stats)
        self.ended_by[ended_by] += 1
        if failed:
            self.calls_failed += 1
        player = None if call is None else call.player
        if player is not None:
            played = player.playout.stats
            per_second = player.playout.bytes_per_second
            for reason, n in (
                ("stop", played.dropped_by_stop),
                ("discarded", played.discarded),
                ("unsent_at_end", played.unsent_at_end),
            ):
                if n:
                    dropped = self.outbound_dropped_seconds
                    dropped[reason] = dropped.get(reason, 0.0) + n / per_second


# CallStats' counts of a realtime bridge -> the `event` label of acs_gateway_realtime_events_total
REALTIME_EVENTS: Final = (
    ("barge_ins", "barge_in"),
    ("false_interruptions", "false_interruption"),
    ("upstream_reconnects", "reconnect"),
    ("session_rollovers", "session_rollover"),
    ("history_turns_dropped", "history_turn_dropped"),
    ("upstream_audio_dropped", "caller_frame_not_sent"),
    ("mix_late_frames", "mix_late_frame"),
    ("mix_waits_expired", "mix_wait_expired"),
)


def _count_realtime(into: Counter[str], stats: CallStats) -> None:
    for field, event in REALTIME_EVENTS:
        n = getattr(stats, field)
        if n:
            into[event] += n
