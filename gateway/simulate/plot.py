"""`--plot FILE.png`: a timeline of one or more simulated calls, drawn with matplotlib.

Owns: the picture. Never: running calls or computing statistics (it draws `Timeline`s).

One panel per call, two lanes: what the caller said (green; barge-ins in orange) and the bot
audio the gateway released (blue), with stop-audio as red lines, each barge-in joined to the
stop-audio that answered it and labelled with the latency, and DTMF keys in purple. A last
panel shows the echo round trip of every matched frame over time. matplotlib is an optional
extra (`pip install 'acs-media-gateway[plot]'`); `require()` says so before a run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import CallResult

INSTALL_HINT = "--plot needs matplotlib: pip install 'acs-media-gateway[plot]'"

CALLER = "#2e7d32"
BARGE = "#ef6c00"
BOT = "#1565c0"
STOP = "#c62828"
DTMF = "#6a1b9a"


def require() -> None:
    """Raise RuntimeError with the install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None


def plot(calls: Sequence[CallResult], path: str | Path, title: str | None = None) -> Path:
    """Draw the calls that kept a timeline into `path` (PNG); returns the path."""
    require()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on a server or in CI
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = [c for c in calls if c.timeline is not None]
    if not shown:
        raise ValueError("no call kept a timeline to plot")
    has_rtt = any(c.timeline and c.timeline.rtt for c in shown)
    rows = len(shown) + (1 if has_rtt else 0)
    heights = [1.0] * len(shown) + ([1.2] if has_rtt else [])
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(12, 1.7 * sum(heights) + 1.0),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    end = max(c.timeline.end for c in shown if c.timeline) or 1.0
    for ax, call in zip(axes[: len(shown), 0], shown, strict=True):
        _draw_call(ax, call)
    if has_rtt:
        ax = axes[-1, 0]
        for call in shown:
            assert call.timeline is not None
            if call.timeline.rtt:
                t, ms = zip(*call.timeline.rtt, strict=True)
                ax.plot(t, ms, ".", markersize=2, label=f"call {call.index}")
        ax.set_ylabel("echo round\ntrip (ms)")
        ax.grid(True, alpha=0.3)
        if len(shown) > 1:
            ax.legend(loc="upper right", fontsize=8, markerscale=4)
    axes[-1, 0].set_xlabel("seconds from the call's start")
    axes[-1, 0].set_xlim(0, end * 1.01)
    legend = [
        Patch(color=CALLER, label="caller speaks"),
        Patch(color=BARGE, label="caller barges in"),
        Patch(color=BOT, label="bot audio (released; cut at stop-audio)"),
        Line2D([], [], color=STOP, lw=2, label="stop-audio"),
        Line2D([], [], color=DTMF, marker="v", lw=0, label="DTMF"),
    ]
    top = 1.0
    if title:
        fig.text(0.5, 0.995, title, ha="center", va="top", fontsize=10, weight="bold")
        top -= 0.35 / fig.get_figheight()
    fig.legend(
        handles=legend,
        loc="upper center",
        bbox_to_anchor=(0.5, top),
        ncol=5,
        frameon=False,
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, top - 0.35 / fig.get_figheight()))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _draw_call(ax: Any, call: CallResult) -> None:
    tl = call.timeline
    assert tl is not None
    barge_spans: list[tuple[float, float]] = []
    speech: list[tuple[float, float]] = []
    for start, stop in tl.speech:
        is_barge = any(abs(start - b) < 0.025 for b in tl.barge_ins)
        (barge_spans if is_barge else speech).append((start, stop - start))
    ax.broken_barh(speech, (1.1, 0.7), color=CALLER)
    ax.broken_barh(barge_spans, (1.1, 0.7), color=BARGE)
    ax.broken_barh([(a, b - a) for a, b in tl.bot], (0.1, 0.7), color=BOT)
    for t in tl.stops:
        ax.axvline(t, color=STOP, lw=1.5)
    answered = list(tl.stops)
    for b in tl.barge_ins:
        later = [s for s in answered if s >= b]
        if later:
            s = later[0]
            ax.annotate(
                "",
                xy=(s, 0.95),
                xytext=(b, 0.95),
                arrowprops={"arrowstyle": "->", "color": STOP, "lw": 1.2},
            )
            ax.text(
                s + 0.03,
                0.95,
                f"{(s - b) * 1000:.0f} ms",
                ha="left",
                va="center",
                fontsize=8,
                color=STOP,
                backgroundcolor="white",
            )
    for t, tone in tl.dtmf:
        ax.plot([t], [1.95], marker="v", color=DTMF, markersize=7)
        ax.text(t, 2.05, tone, ha="center", fontsize=8, color=DTMF)
    ax.set_ylim(0, 2.3)
    ax.set_yticks([0.45, 1.45], ["bot", "caller"])
    ax.grid(True, axis="x", alpha=0.3)
    details = [f"call {call.index}"]
    if call.first_audio_ms is not None:
        details.append(f"first audio after {call.first_audio_ms:.0f} ms")
    p50 = call.rtt.percentile(50)
    if p50 is not None:
        details.append(f"echo round trip p50 {p50:.1f} ms, p99 {call.rtt.percentile(99):.1f} ms")
    if call.stop_latencies_ms:
        details.append(
            "stop-audio after barge-in "
            + ", ".join(f"{ms:.0f}" for ms in call.stop_latencies_ms)
            + " ms"
        )
    if call.errors:
        details.append("errors: " + ", ".join(call.errors))
    ax.set_title("; ".join(details), fontsize=9, loc="left")
