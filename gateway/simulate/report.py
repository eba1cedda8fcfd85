"""The simulator's results: per-call numbers, totals, the simulator's own health, thresholds.

Owns: `Histogram` (mergeable across worker processes), `CallResult`, `Report` (a readable
table and JSON), and checking `--max` / `--min` thresholds. Never: I/O beyond formatting text.

All times in a `CallResult` are seconds from the call's start (its `AudioMetadata`), so calls
and recordings compare without a shared clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

LATE_P99_LIMIT_MS: Final = 2.0  # the simulator's frames are trustworthy up to this lateness
LATE_MAX_LIMIT_MS: Final = 20.0  # a frame a whole period late means the simulator stalled
CPU_LIMIT_PCT: Final = 90.0  # a worker process above this share of its core is saturated


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
    hung_up: bool = False  # a scripted abrupt hang-up
    timeline: Timeline | None = None

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

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


def _pct(values: Iterable[float], p: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


@attrs.define
class Report:
    calls: list[CallResult]
    health: SimulatorHealth
    settings: dict[str, Any] = attrs.field(factory=dict)

    def totals(self) -> dict[str, Any]:
        """Flat metrics over all calls: the names `--max` and `--min` accept."""
        rtt = Histogram()
        for call in self.calls:
            rtt.merge(call.rtt)
        first = [c.first_audio_ms for c in self.calls if c.first_audio_ms is not None]
        stops = [ms for c in self.calls for ms in c.stop_latencies_ms]
        errors: dict[str, int] = {}
        for call in self.calls:
            for kind, n in call.errors.items():
                errors[kind] = errors.get(kind, 0) + n
        late = self.health.send_lateness
        cpu = self.health.cpu_pct
        return {
            "calls": len(self.calls),
            "calls_connected": sum(c.connected for c in self.calls),
            "calls_failed": sum(bool(c.errors) for c in self.calls),
            "calls_hung_up": sum(c.hung_up for c in self.calls),
            "frames_sent": sum(c.frames_sent for c in self.calls),
            "frames_received": sum(c.frames_received for c in self.calls),
            "audio_s_received": round(sum(c.audio_ms_received for c in self.calls) / 1000, 2),
            "stop_audio": sum(c.stop_audio for c in self.calls),
            "barge_ins": sum(c.barge_ins for c in self.calls),
            "dtmf_sent": sum(c.dtmf_sent for c in self.calls),
            "first_audio_p50_ms": _round(_pct(first, 50)),
            "first_audio_p95_ms": _round(_pct(first, 95)),
            "first_audio_max_ms": _round(max(first, default=None)),
            "rtt_frames": rtt.count,
            "rtt_p50_ms": rtt.percentile(50),
            "rtt_p90_ms": rtt.percentile(90),
            "rtt_p99_ms": rtt.percentile(99),
            "rtt_max_ms": rtt.percentile(100),
            "stop_latency_p50_ms": _round(_pct(stops, 50)),
            "stop_latency_p95_ms": _round(_pct(stops, 95)),
            "stop_latency_max_ms": _round(max(stops, default=None)),
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
            "send_late_p50_ms": late.percentile(50),
            "send_late_p99_ms": late.percentile(99),
            "send_late_max_ms": late.percentile(100),
            "simulator_cpu_pct": round(sum(cpu), 1),
            "simulator_cpu_pct_per_process": cpu,
            "simulator_fell_behind": bool(self.health.behind()),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "totals": self.totals(),
            "simulator": {**self.health.to_json(), "fell_behind": self.health.behind()},
            "calls": [c.to_json() for c in self.calls],
        }

    def table(self, max_calls: int = 20) -> str:
        t = self.totals()
        lines = [
            f"{'call':>5} {'connection id':<38} {'sent':>7} {'recv':>7} {'first ms':>9} "
            f"{'rtt p50':>8} {'rtt p99':>8} {'stops':>5} {'stop ms':>8}  end",
        ]
        for c in self.calls[:max_calls]:
            stop = f"{max(c.stop_latencies_ms):.0f}" if c.stop_latencies_ms else "-"
            end = ", ".join(f"{k} x{n}" for k, n in c.errors.items()) or (
                "hung up" if c.hung_up else f"closed {c.close_code}"
            )
            lines.append(
                f"{c.index:>5} {c.connection_id[:38]:<38} {c.frames_sent:>7} "
                f"{c.frames_received:>7} {_fmt(c.first_audio_ms):>9} "
                f"{_fmt(c.rtt.percentile(50)):>8} {_fmt(c.rtt.percentile(99)):>8} "
                f"{c.stop_audio:>5} {stop:>8}  {end}"
            )
        if len(self.calls) > max_calls:
            lines.append(f"  ... {len(self.calls) - max_calls} more calls (all in --json)")
        lines += [
            "",
            f"calls      {t['calls']} ({t['calls_connected']} connected, {t['calls_failed']} "
            f"with errors, {t['calls_hung_up']} hung up on purpose)",
            f"frames     {t['frames_sent']} sent, {t['frames_received']} audio received "
            f"({t['audio_s_received']} s), {t['stop_audio']} stop-audio",
            f"first audio p50 {_fmt(t['first_audio_p50_ms'])} ms, p95 "
            f"{_fmt(t['first_audio_p95_ms'])} ms, max {_fmt(t['first_audio_max_ms'])} ms",
            f"round trip  p50 {_fmt(t['rtt_p50_ms'])} ms, p90 {_fmt(t['rtt_p90_ms'])} ms, p99 "
            f"{_fmt(t['rtt_p99_ms'])} ms, max {_fmt(t['rtt_max_ms'])} ms "
            f"({t['rtt_frames']} echoed frames)",
            f"barge-in    {t['barge_ins']} scripted; stop-audio after p50 "
            f"{_fmt(t['stop_latency_p50_ms'])} ms, p95 {_fmt(t['stop_latency_p95_ms'])} ms, max "
            f"{_fmt(t['stop_latency_max_ms'])} ms",
            "errors      "
            + (", ".join(f"{k}: {n}" for k, n in sorted(t["errors_by_kind"].items())) or "none"),
            f"simulator   CPU {t['simulator_cpu_pct']}% of a core "
            f"({' + '.join(f'{p}%' for p in t['simulator_cpu_pct_per_process'])} in "
            f"{len(t['simulator_cpu_pct_per_process'])} process(es)); frame send lateness p50 "
            f"{_fmt(t['send_late_p50_ms'], 2)} ms, p99 {_fmt(t['send_late_p99_ms'], 2)} ms, "
            f"max {_fmt(t['send_late_max_ms'], 2)} ms",
        ]
        behind = self.health.behind()
        if behind:
            lines.append(
                "WARNING: the simulator fell behind (" + "; ".join(behind) + "): its timings "
                "and the gateway's are mixed up; use fewer calls or more --processes"
            )
        return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- thresholds --


def parse_threshold(text: str) -> tuple[str, float]:
    """ "rtt_p99_ms=50" -> ("rtt_p99_ms", 50.0); raises ValueError naming the valid metrics."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in THRESHOLD_METRICS:
        raise ValueError(
            f"bad threshold {text!r}: use METRIC=NUMBER with METRIC one of "
            + ", ".join(sorted(THRESHOLD_METRICS))
        )
    try:
        return name, float(value)
    except ValueError:
        raise ValueError(f"bad threshold {text!r}: {value!r} is not a number") from None


def missed(
    totals: Mapping[str, Any],
    maxima: Iterable[tuple[str, float]],
    minima: Iterable[tuple[str, float]],
) -> list[str]:
    """Every threshold the run missed, as readable lines. A metric with no value (no echoed
    frames, no barge-in) misses its threshold: the run did not show what was asked."""
    out = []
    for name, limit in maxima:
        value = totals[name]
        if value is None:
            out.append(f"{name} was not measured (maximum {limit:g})")
        elif value > limit:
            out.append(f"{name} = {value}, above the maximum {limit:g}")
    for name, limit in minima:
        value = totals[name]
        if value is None:
            out.append(f"{name} was not measured (minimum {limit:g})")
        elif value < limit:
            out.append(f"{name} = {value}, below the minimum {limit:g}")
    return out


THRESHOLD_METRICS: Final = frozenset(
    {
        "calls_connected",
        "calls_failed",
        "frames_sent",
        "frames_received",
        "audio_s_received",
        "stop_audio",
        "first_audio_p50_ms",
        "first_audio_p95_ms",
        "first_audio_max_ms",
        "rtt_frames",
        "rtt_p50_ms",
        "rtt_p90_ms",
        "rtt_p99_ms",
        "rtt_max_ms",
        "stop_latency_p50_ms",
        "stop_latency_p95_ms",
        "stop_latency_max_ms",
        "errors",
        "send_late_p50_ms",
        "send_late_p99_ms",
        "send_late_max_ms",
        "simulator_cpu_pct",
    }
)
