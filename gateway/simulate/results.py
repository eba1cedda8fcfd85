"""What the simulator measures: each call's numbers, and whether the simulator itself kept up.

Owns: `Histogram` (mergeable across worker processes), `Timeline` (one call's events, for the
plot), `CallResult` (one call's numbers, how it ended, the echo faults: lost, reordered,
corrupted), `SimulatorHealth` (the simulator's own CPU and frame send lateness, and the
thresholds past which its timing cannot be trusted), and their JSON, in which worker processes
hand them back. Never: I/O; totals over the calls, the table or the JSON report (`report`);
deciding whether a run failed (`checks`).

All times in a `CallResult` are seconds from the call's start (its `AudioMetadata`), so calls
and recordings compare without a shared clock.

The echo faults count in echo mode (`report.Report.echo_mode`), where every frame sent on the
echoed track should come back once, in order, byte for byte. `lost` counts frames never
echoed (up to the last frame the server echoed when the server ended the call itself, so what
was in flight at its hang-up is not loss), `reordered` echoes older than one already seen,
`corrupted` echoed audio that is not byte for byte a frame sent and not yet echoed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

LATE_P99_LIMIT_MS: Final = 2.0  # the simulator's frames are trustworthy up to this lateness
LATE_MAX_LIMIT_MS: Final = 20.0  # a frame a whole period late means the simulator stalled
CPU_LIMIT_PCT: Final = 90.0  # a worker process above this share of its core is saturated
# How a call ended, when it ended well; any other end is also an error kind.
GOOD_ENDS: Final = frozenset({"completed", "bot_hung_up", "hung_up"})


class Histogram:
    """Counts of durations at 0.1 ms resolution; cheap to add, exact to merge."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, seconds: float) -> None:
        key = int(seconds * 10000) if seconds > 0 else 0
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: Histogram) -> None:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0-100) in milliseconds; None when empty."""
        total = self.count
        if not total:
            return None
        rank = max(1, math.ceil(total * p / 100))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key / 10
        return max(self.counts) / 10  # pragma: no cover (rank <= total)

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.counts.items()}

    @classmethod
    def from_json(cls, obj: Mapping[str, int]) -> Histogram:
        return cls({int(k): v for k, v in obj.items()})


@attrs.define
class Timeline:
    """What happened in one call, for the plot: intervals are [start, end] seconds."""

    speech: list[list[float]] = attrs.field(factory=list)  # the caller speaking
    bot: list[list[float]] = attrs.field(factory=list)  # bot audio, as the gateway released it
    stops: list[float] = attrs.field(factory=list)
    barge_ins: list[float] = attrs.field(factory=list)
    dtmf: list[tuple[float, str]] = attrs.field(factory=list)
    rtt: list[tuple[float, float]] = attrs.field(factory=list)  # (time, round trip ms)
    end: float = 0.0

    def add_bot_audio(self, now: float, seconds: float) -> None:
        # Frames arriving within 5 ms of where the last one ends continue one stretch.
        if self.bot and now <= self.bot[-1][1] + 0.005:
            self.bot[-1][1] = max(self.bot[-1][1], now) + seconds
        else:
            self.bot.append([now, now + seconds])

    def stop_audio(self, now: float) -> None:
        # ACS drops what it has not played yet: the bot's audio ends here.
        self.stops.append(now)
        if self.bot and self.bot[-1][1] > now:
            self.bot[-1][1] = max(self.bot[-1][0], now)


@attrs.define
class CallResult:
    index: int
    connection_id: str
    started: float = 0.0  # seconds from the run's start
    connected: bool = False
    frames_sent: int = 0
    frames_received: int = 0  # audioData messages from the gateway
    audio_ms_received: float = 0.0
    stop_audio: int = 0
    other_received: int = 0
    dtmf_sent: int = 0
    first_audio_ms: float | None = None  # from the first frame sent to the first audio back
    rtt: Histogram = attrs.field(factory=Histogram)  # echoed frames' round trips
    barge_ins: int = 0
    stop_latencies_ms: list[float] = attrs.field(factory=list)  # barge-in to stop-audio
    errors: dict[str, int] = attrs.field(factory=dict)
    close_code: int | None = None
    close_reason: str = ""
    closed_at: float | None = None  # when the server's close came, if before the scenario's end
    hung_up: bool = False  # a scripted abrupt hang-up
    end: str | None = None  # how the call ended, set once (GOOD_ENDS, or an error kind)
    forms: dict[str, int] = attrs.field(factory=dict)  # gateway messages by form
    echoed: int = 0  # frames echoed back (each frame once)
    echo_expected: int = 0  # frames that should have come back, were the server an echo
    reordered: int = 0
    mismatched: int = 0  # echoes of a frame sent whose bytes differ
    unmatched: int = 0  # audio that is no frame sent and not yet echoed
    timeline: Timeline | None = None

    def error(self, kind: str) -> None:
        """Count a fault of this call; each kind once per call."""
        self.errors[kind] = 1

    def ended(self, kind: str) -> None:
        """How the call ended: the first end wins, so a call is counted once."""
        if self.end is None:
            self.end = kind
            if kind not in GOOD_ENDS:
                self.error(kind)

    def lost(self, echo: bool) -> int:
        return max(0, self.echo_expected - self.echoed) if echo else 0

    def corrupted(self, echo: bool) -> int:
        return self.mismatched + self.unmatched if echo else 0

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False, filter=lambda a, _: a.name not in ("rtt",))
        out["rtt"] = self.rtt.to_json()
        out["timeline"] = attrs.asdict(self.timeline) if self.timeline else None
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CallResult:
        obj = dict(obj)
        obj["rtt"] = Histogram.from_json(obj["rtt"])
        if obj.get("timeline") is not None:
            tl = obj["timeline"]
            tl["dtmf"] = [tuple(x) for x in tl["dtmf"]]
            tl["rtt"] = [tuple(x) for x in tl["rtt"]]
            obj["timeline"] = Timeline(**tl)
        return cls(**obj)


@attrs.define
class SimulatorHealth:
    """How the simulator itself did: per worker process, CPU share of a core and wall time."""

    cpu_seconds: list[float] = attrs.field(factory=list)
    wall_seconds: list[float] = attrs.field(factory=list)
    send_lateness: Histogram = attrs.field(factory=Histogram)  # each frame: sent - due

    def merge(self, other: SimulatorHealth) -> None:
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds += other.wall_seconds
        self.send_lateness.merge(other.send_lateness)

    @property
    def cpu_pct(self) -> list[float]:
        return [
            round(100 * c / w, 1) if w else 0.0
            for c, w in zip(self.cpu_seconds, self.wall_seconds, strict=True)
        ]

    def behind(self) -> list[str]:
        """Why the simulator's own timing cannot be trusted in this run (empty: it can)."""
        why = []
        p99 = self.send_lateness.percentile(99)
        top = self.send_lateness.percentile(100)
        if p99 is not None and p99 > LATE_P99_LIMIT_MS:
            why.append(f"frame send lateness p99 {p99:.1f} ms > {LATE_P99_LIMIT_MS} ms")
        if top is not None and top > LATE_MAX_LIMIT_MS:
            why.append(f"a frame left {top:.1f} ms late (more than one 20 ms period)")
        for i, pct in enumerate(self.cpu_pct):
            if pct > CPU_LIMIT_PCT:
                why.append(f"worker {i} used {pct}% of its core")
        return why

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "send_lateness": self.send_lateness.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SimulatorHealth:
        return cls(
            obj["cpu_seconds"], obj["wall_seconds"], Histogram.from_json(obj["send_lateness"])
        )
