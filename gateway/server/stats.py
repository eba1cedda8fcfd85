"""The server's counts: the one place where connections and calls are counted.

Owns: every server-wide count (calls accepted, refused, failed and ended; handshake and token
failures; the per-call counts of ended calls) and the live calls' own `CallStats`. Never: talks
to Prometheus. `gateway.ops.metrics` derives its counters from these at each flush (live calls
included), so every event is counted once, here, and `server.stats` and `/metrics` agree.

A call's counts move from `live` into the totals in `call_ended`, with no await between, so a
total seen with the live calls added never goes back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import attrs

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
    upstream_errors: Counter[str] = attrs.field(factory=Counter)  # by kind
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
        return self._live.values()

    def refused_by_status(self) -> Counter[str]:
        """Every refused handshake (admission and token), by the HTTP status sent."""
        statuses: Counter[str] = Counter()
        for reason, n in self.refused_by.items():
            statuses[str(REFUSAL_STATUS[reason])] += n
        for reason, n in self.auth_failed.items():
            statuses[str(AuthFailure(reason, "").status)] += n  # the status it refuses with
        return statuses

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
        self, stats: CallStats, ended_by: str, *, failed: bool, call: Call | None = None
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
