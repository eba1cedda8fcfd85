"""`acs-media-gateway show CALL_RECORD`: one call's record drawn as a PNG timeline.

Owns: the picture of a record: the caller's and the bot's waveforms (one panel per channel),
the lanes of simulate's plot (who spoke when, barge-ins joined to their stop-audio with the
latency, DTMF), what the caller heard of each cut reply, and the transcript lines. Never: reads
the files itself (`gateway.records.timeline` does) or changes simulate's drawing, which it
reuses as it is. matplotlib is the `plot` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from .records.timeline import RecordTimeline, load_record
from .simulate import plot as simulate_plot
from .simulate.results import CallResult, Timeline

TRANSCRIPT_LINES: Final = 14  # at most this many transcript lines under the timeline


def add_parser(commands: Any) -> argparse.ArgumentParser:
    show: argparse.ArgumentParser = commands.add_parser(
        "show", help="draw one call's record (its .jsonl event log and .wav) as a PNG timeline"
    )
    show.add_argument("record", metavar="CALL_RECORD", help="the record's .jsonl, .wav or stem")
    show.add_argument("-o", "--output", help="the PNG to write (default: the record's stem.png)")
    return show


def run(args: argparse.Namespace) -> int:
    try:
        timeline = load_record(args.record)
        simulate_plot.require()
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"acs-media-gateway show: {exc}")
        return 2
    stem = Path(args.record)
    output = Path(args.output) if args.output else stem.with_suffix("").with_suffix(".png")
    if stem.suffix not in (".wav", ".jsonl"):
        output = Path(args.output) if args.output else stem.with_name(stem.name + ".png")
    draw(timeline, output, title=stem.with_suffix("").name)
    print(output)
    return 0


def as_call_result(tl: RecordTimeline) -> CallResult:
    """The record as simulate's `CallResult`, so its lanes are drawn the same way."""
    lanes = Timeline(
        speech=[list(s) for s in tl.speech],
        bot=[list(b) for b in tl.bot],
        stops=list(tl.stops),
        barge_ins=list(tl.barge_ins),
        dtmf=list(tl.dtmf),
        end=tl.end,
    )
    result = CallResult(index=0, connection_id="", timeline=lanes)
    latencies = tl.latencies_ms()
    if latencies.get("first_audio"):
        result.first_audio_ms = latencies["first_audio"][0]
    result.stop_latencies_ms = list(latencies.get("barge_in_stop", []))
    return result


def draw(tl: RecordTimeline, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    waves = len(tl.envelopes)
    shown = tl.transcripts[:TRANSCRIPT_LINES]
    heights = [0.8] * waves + [1.4, 0.2 * len(shown) + 0.01]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(12, 1.6 * sum(heights) + 1.0),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    names = [f"caller {i + 1}" if waves > 2 else "caller" for i in range(waves - 1)] + ["bot"]
    colors = [simulate_plot.CALLER] * (waves - 1) + [simulate_plot.BOT]
    for ax, (times, low, high), name, color in zip(
        axes[:waves, 0], tl.envelopes, names, colors, strict=True
    ):
        ax.fill_between(times, low, high, color=color, linewidth=0)
        ax.set_ylim(-32768, 32767)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        for t in tl.stops:
            ax.axvline(t, color=simulate_plot.STOP, lw=1)
    lanes = axes[waves, 0]
    simulate_plot._draw_call(lanes, as_call_result(tl))  # noqa: SLF001  # reused as it is
    for t, heard in tl.heard_ms:
        lanes.text(t - 0.03, 0.45, f"heard {heard:.0f} ms", ha="right", va="center", fontsize=8)
    words = axes[waves + 1, 0]
    words.axis("off")
    for row, (t, who, text) in enumerate(shown):
        color = simulate_plot.BOT if who == "bot" else simulate_plot.CALLER
        line = f"{t:7.2f} s  {who}: {text[:110]}"
        words.text(
            0.0,
            1 - (row + 0.5) / len(shown),
            line,
            transform=words.transAxes,
            fontsize=8,
            color=color,
            family="monospace",
            va="center",
        )
    axes[waves, 0].set_xlim(0, max(tl.end, 0.1) * 1.01)
    lanes.tick_params(labelbottom=True)
    lanes.set_xlabel("seconds from the call's start")
    latencies = tl.latencies_ms()
    details = [title] if title else []
    if latencies.get("response"):
        details.append("response " + ", ".join(f"{ms:.0f}" for ms in latencies["response"]) + " ms")
    fig.suptitle("; ".join(details), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
