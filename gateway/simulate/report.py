"""The simulator's report: totals over the calls, a readable table and JSON, and which side was
overloaded.

Owns: `Report` (the totals that `--max` and `--min` name, the table, the JSON), echo mode, which
side fell behind (the simulator, by its own health; or the gateway, by lost echoes or round
trips past `GATEWAY_RTT_LIMIT_MS`), and the formatting of figures and of how a call ended.
Never: I/O beyond formatting text; what a call or the simulator measured (`results`); deciding
whether a run failed (`checks`).

Echo mode (`expect` "echo", or "auto" when any call got back a frame it sent) decides whether
the echo faults (lost, reordered, corrupted: `results`) are counted in the totals and the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from .results import CallResult, Histogram, SimulatorHealth

GATEWAY_RTT_LIMIT_MS: Final = 100.0  # echoes later than five frame periods: the gateway lags


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
        echo = self.echo_mode()
        forms: dict[str, int] = {}
        for call in self.calls:
            for form, n in call.forms.items():
                forms[form] = forms.get(form, 0) + n
        expected = sum(c.echo_expected for c in self.calls) if echo else 0
        lost = sum(c.lost(echo) for c in self.calls)
        return {
            "expect": "echo" if echo else "bot",
            "echoed": sum(c.echoed for c in self.calls),
            "echo_expected": expected,
            "lost": lost,
            "lost_pct": round(100 * lost / expected, 2) if expected else 0.0,
            "reordered": sum(c.reordered for c in self.calls) if echo else 0,
            "corrupted": sum(c.corrupted(echo) for c in self.calls),
            "unrecognised": forms.get("unrecognised", 0),
            "messages_by_form": forms,
            "calls_closed_early": sum(c.end == "closed_early" for c in self.calls),
            "calls_bot_hung_up": sum(c.end == "bot_hung_up" for c in self.calls),
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

    def echo_mode(self) -> bool:
        expect = self.settings.get("expect", "auto")
        return expect == "echo" or (expect == "auto" and any(c.echoed for c in self.calls))

    def overload(self, t: Mapping[str, Any] | None = None) -> tuple[str | None, list[str]]:
        """Which side fell behind ("simulator", "gateway" or None), and its figures."""
        behind = self.health.behind()
        if behind:
            return "simulator", behind
        t = t if t is not None else self.totals()
        p99 = t["rtt_p99_ms"]
        if t["expect"] != "echo" or not (
            t["lost"] or (p99 is not None and p99 > GATEWAY_RTT_LIMIT_MS)
        ):
            return None, []
        return "gateway", [
            f"{t['lost']} of {t['echo_expected']} frames never echoed ({t['lost_pct']}%)",
            f"round trip p99 {_fmt(p99)} ms",
            f"while the simulator kept time (send lateness p99 {_fmt(t['send_late_p99_ms'], 2)}"
            f" ms, CPU {t['simulator_cpu_pct']}% of a core)",
        ]

    def to_json(self) -> dict[str, Any]:
        totals = self.totals()
        side, why = self.overload(totals)
        echo = totals["expect"] == "echo"
        return {
            "settings": self.settings,
            "totals": totals,
            "overload": {"side": side, "figures": why},
            "simulator": {**self.health.to_json(), "fell_behind": self.health.behind()},
            "calls": [
                {**c.to_json(), "lost": c.lost(echo), "corrupted": c.corrupted(echo)}
                for c in self.calls
            ],
        }

    def table(self, max_calls: int = 20) -> str:
        t = self.totals()
        echo = t["expect"] == "echo"
        lines = [
            f"{'call':>5} {'connection id':<38} {'sent':>7} {'recv':>7} {'first ms':>9} "
            f"{'rtt p50':>8} {'rtt p99':>8} {'stops':>5} {'stop ms':>8} {'lost':>5} "
            f"{'reord':>5} {'corr':>5}  end",
        ]
        for c in self.calls[:max_calls]:
            stop = f"{max(c.stop_latencies_ms):.0f}" if c.stop_latencies_ms else "-"
            lines.append(
                f"{c.index:>5} {c.connection_id[:38]:<38} {c.frames_sent:>7} "
                f"{c.frames_received:>7} {_fmt(c.first_audio_ms):>9} "
                f"{_fmt(c.rtt.percentile(50)):>8} {_fmt(c.rtt.percentile(99)):>8} "
                f"{c.stop_audio:>5} {stop:>8} {c.lost(echo):>5} "
                f"{c.reordered if echo else 0:>5} {c.corrupted(echo):>5}  {_end(c)}"
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
            (
                f"echo        {t['echoed']} of {t['echo_expected']} frames echoed; lost "
                f"{t['lost']} ({t['lost_pct']}%), reordered {t['reordered']}, corrupted "
                f"{t['corrupted']}"
                if echo
                else "echo        not an echo (no frame came back): no loss accounting"
            ),
            "forms       "
            + (", ".join(f"{k}: {n}" for k, n in sorted(t["messages_by_form"].items())) or "none"),
            f"ends        {t['calls_closed_early']} closed early by the server, "
            f"{t['calls_bot_hung_up']} hung up by the bot",
            "errors      "
            + (", ".join(f"{k}: {n}" for k, n in sorted(t["errors_by_kind"].items())) or "none"),
            f"simulator   CPU {t['simulator_cpu_pct']}% of a core "
            f"({' + '.join(f'{p}%' for p in t['simulator_cpu_pct_per_process'])} in "
            f"{len(t['simulator_cpu_pct_per_process'])} process(es)); frame send lateness p50 "
            f"{_fmt(t['send_late_p50_ms'], 2)} ms, p99 {_fmt(t['send_late_p99_ms'], 2)} ms, "
            f"max {_fmt(t['send_late_max_ms'], 2)} ms",
        ]
        side, why = self.overload(t)
        if side == "simulator":
            lines.append(
                "WARNING: the simulator fell behind (" + "; ".join(why) + "): its timings "
                "and the gateway's are mixed up; use fewer calls or more --processes"
            )
        elif side == "gateway":
            lines.append("WARNING: the gateway fell behind (" + "; ".join(why) + ")")
        if t["calls_connected"] and not t["frames_received"] and not t["stop_audio"]:
            lines.append("WARNING: no audio came back from the gateway")
        return "\n".join(lines)


def _end(c: CallResult) -> str:
    if c.end == "closed_early":
        return f"closed early {c.close_code} {c.close_reason!r} at {_fmt(c.closed_at)} s"
    if c.end == "bot_hung_up":
        return f"bot hung up {c.close_code} at {_fmt(c.closed_at)} s"
    if c.hung_up:
        return "hung up"
    others = [NAMES.get(k, k) for k in c.errors if k != c.end]
    main = f"closed {c.close_code}" if c.end in (None, "completed") else NAMES.get(c.end, c.end)
    return ", ".join([main, *others])


NAMES: Final = {
    "no_reply_to_barge_in": "no reply to barge in on",
    "no_hangup": "the bot did not hang up",
    "connection_lost": "connection lost",
}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
