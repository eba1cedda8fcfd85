"""Whether a simulator run failed: `--max` / `--min` thresholds, the default checks that fail a
broken server, and `--require-form`.

Owns: the metric names thresholds accept, parsing them, and the readable lines that name each
failed check. Never: computing the metrics (`report`), I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from .report import Report

# What a run must show unless `--max` says otherwise: a broken server fails by default.
DEFAULT_MAXIMA: Final = (
    ("errors", 0.0),
    ("lost", 0.0),
    ("reordered", 0.0),
    ("corrupted", 0.0),
    ("unrecognised", 0.0),
)


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
            detail = ""
            if name == "errors":
                kinds = totals["errors_by_kind"]
                detail = " (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")"
            out.append(f"{name} = {value}{detail}, above the maximum {limit:g}")
    for name, limit in minima:
        value = totals[name]
        if value is None:
            out.append(f"{name} was not measured (minimum {limit:g})")
        elif value < limit:
            out.append(f"{name} = {value}, below the minimum {limit:g}")
    return out


def checks(
    report: Report,
    maxima: Iterable[tuple[str, float]] = (),
    minima: Iterable[tuple[str, float]] = (),
    require_form: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[str]:
    """Everything that fails the run: the thresholds given, the default maxima (`DEFAULT_MAXIMA`,
    each replaced by a `--max` of the same metric), and a form other than `require_form`.
    `extra`: more metrics the thresholds may name (the control mode's)."""
    maxima = list(maxima)
    given = {name for name, _ in maxima}
    maxima += [(name, limit) for name, limit in DEFAULT_MAXIMA if name not in given]
    totals = {**report.totals(), **(extra or {})}
    out = missed(totals, maxima, minima)
    if require_form is not None:
        others = {
            form: n
            for form, n in totals["messages_by_form"].items()
            if form not in (require_form, "unrecognised")
        }
        for form, n in sorted(others.items()):
            out.append(f"{n} message(s) in the {form} form, not {require_form} (--require-form)")
    if totals["calls_connected"] == 0:
        out.append("no call connected")
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
        "lost",
        "lost_pct",
        "reordered",
        "corrupted",
        "unrecognised",
        "calls_closed_early",
        "send_late_p50_ms",
        "send_late_p99_ms",
        "send_late_max_ms",
        "simulator_cpu_pct",
        # the control mode's (`control_report.totals`)
        "calls_answered",
        "calls_streaming",
        "answer_p50_ms",
        "answer_p99_ms",
        "media_connect_p50_ms",
        "media_connect_p99_ms",
        "gateway_answer_p50_ms",
        "gateway_answer_p99_ms",
    }
)
