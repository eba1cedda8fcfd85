"""The report of simulate's control-plane mode: the control plane's figures beside the media
report every simulate run prints.

Owns: the control totals (calls answered, streaming, failed; ends by kind; answer and
media-connect latency p50/p99), their lines in the table and their block in the JSON, and the
lines that name a control-plane fault. The media side is the usual `Report` of the calls'
`CallResult`s, so the thresholds and default checks (`checks`) apply as in any run. Never: I/O
beyond formatting text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .checks import checks
from .control import ENDS, ControlRun
from .report import Report
from .results import Histogram


def media_report(run: ControlRun) -> Report:
    return Report([c.result for c in run.calls], run.health, dict(run.settings))


def totals(run: ControlRun) -> dict[str, Any]:
    answer, media, own = Histogram(), Histogram(), run.gateway_answer
    for call in run.calls:
        if call.answer_s is not None:
            answer.add(call.answer_s)
        if call.media_s is not None:
            media.add(call.media_s)
    return {
        "calls_answered": sum(c.answered for c in run.calls),
        "calls_streaming": sum(c.streaming for c in run.calls),
        "calls_failed": sum(bool(c.result.errors) for c in run.calls),
        "ends": {end: sum(c.ended == end for c in run.calls) for end in ENDS},
        "answer_p50_ms": answer.percentile(50),
        "answer_p99_ms": answer.percentile(99),
        "answer_max_ms": answer.percentile(100),
        "media_connect_p50_ms": media.percentile(50),
        "media_connect_p99_ms": media.percentile(99),
        "media_connect_max_ms": media.percentile(100),
        "gateway_answer_p50_ms": own.percentile(50) if own else None,
        "gateway_answer_p99_ms": own.percentile(99) if own else None,
        "answer_refusals": {str(k): n for k, n in sorted(run.answer_refusals.items())},
    }


def problems(
    run: ControlRun,
    maxima: Iterable[tuple[str, float]] = (),
    minima: Iterable[tuple[str, float]] = (),
) -> list[str]:
    """Everything that fails the run: the media checks, the thresholds (control metrics
    included), and each control-plane fault named with its count."""
    control = totals(run)
    out = checks(media_report(run), maxima, minima, extra=control)
    calls = len(run.calls)
    missing = calls - control["calls_answered"]
    if missing:
        refused = ", ".join(f"{n} with {s}" for s, n in control["answer_refusals"].items())
        why = f": ACS refused the gateway's answer request ({refused})" if refused else ""
        out.append(f"{missing} of {calls} call(s) not answered{why}")
    faults: dict[str, int] = {}
    for call in run.calls:
        if call.answered and call.result.end not in ("completed", "bot_hung_up"):
            kind = call.result.end or "unfinished"
            faults[kind] = faults.get(kind, 0) + 1
    for kind, n in sorted(faults.items()):
        out.append(f"{n} answered call(s) failed: {FAULT_NAMES.get(kind, kind)}")
    return out


FAULT_NAMES: Final = {
    "streaming_failed": "MediaStreamingFailed (ACS could not open the media WebSocket)",
    "media_timeout": "the media WebSocket never opened",
    "media_lost": "the media WebSocket closed during the call",
    "no_bot_end": "the bot did not hang up on '#' (is its processor control_bot?)",
    "no_transfer_end": "the bot did not transfer on '*' (is its processor control_bot?)",
    "no_caller_end": "the call did not end when the caller hung up",
}


def to_json(run: ControlRun, failed: list[str]) -> dict[str, Any]:
    return {**media_report(run).to_json(), "control": totals(run), "failed": failed}


def table(run: ControlRun) -> str:
    t = totals(run)
    ends = ", ".join(f"{n} {end}" for end, n in t["ends"].items())
    media = media_report(run).table()
    if "WARNING: the simulator fell behind" in media:
        where = "" if run.settings.get("gateway") else ", and the gateway,"
        media += (
            f"\n(--control: the fake ACS and its callers{where} share this process; "
            "fewer calls, a longer --ramp or a quieter machine)"
        )
    lines = [
        media,
        "",
        f"control    {len(run.calls)} rung, {t['calls_answered']} answered, "
        f"{t['calls_streaming']} streaming, {t['calls_failed']} failed; ended by: {ends}",
        f"answer     p50 {_fmt(t['answer_p50_ms'])} ms, p99 {_fmt(t['answer_p99_ms'])} ms, max "
        f"{_fmt(t['answer_max_ms'])} ms (IncomingCall posted -> answer request at ACS)",
        f"media      p50 {_fmt(t['media_connect_p50_ms'])} ms, p99 "
        f"{_fmt(t['media_connect_p99_ms'])} ms, max {_fmt(t['media_connect_max_ms'])} ms "
        "(answer -> media WebSocket open)",
    ]
    if t["gateway_answer_p50_ms"] is not None:
        lines.append(
            f"gateway    its own share of the answer p50 {_fmt(t['gateway_answer_p50_ms'])} ms, "
            f"p99 {_fmt(t['gateway_answer_p99_ms'])} ms (event read -> request handed to the SDK)"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
