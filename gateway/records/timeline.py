"""`load_record`: one call's record files read back as a `RecordTimeline`, for people and tools.

Owns: reading what `gateway.records` wrote (the event log, and the WAV beside it when there is
one) and deriving what a picture of the call needs: when the caller spoke, when the bot was
heard, the cuts, barge-ins with what the caller heard of the cut reply, DTMF, transcripts and
waveform envelopes. Never: draws (`gateway.show` does, with matplotlib) or writes.

When the caller spoke: from the model's turns (`speech_started` .. `turn_ended`) when the log
has them, else from the caller channel's energy per 20 ms frame.
"""

from __future__ import annotations

import json
import math
import wave
from array import array
from pathlib import Path
from typing import Any, Final

import attrs

FRAME_S: Final = 0.02
SPEECH_RMS: Final = 300.0  # PCM16 RMS above which a caller frame counts as speech
MERGE_GAP: Final = 0.2  # seconds: speech frames closer than this are one stretch
ENVELOPE_BINS: Final = 3000


@attrs.define
class RecordTimeline:
    """Seconds on the call's clock; intervals are [start, end]."""

    events: list[dict[str, Any]] = attrs.field(factory=list)
    speech: list[list[float]] = attrs.field(factory=list)
    bot: list[list[float]] = attrs.field(factory=list)
    stops: list[float] = attrs.field(factory=list)
    barge_ins: list[float] = attrs.field(factory=list)  # when the caller started speaking
    heard_ms: list[tuple[float, float]] = attrs.field(factory=list)  # (cut time, ms heard)
    dtmf: list[tuple[float, str]] = attrs.field(factory=list)
    transcripts: list[tuple[float, str, str]] = attrs.field(factory=list)  # (t, who, text)
    # (times, minimum, maximum) per channel: the caller's, then the bot's last
    envelopes: list[tuple[list[float], list[int], list[int]]] = attrs.field(factory=list)
    end: float = 0.0

    def latencies_ms(self) -> dict[str, list[float]]:
        ended = [e for e in self.events if e["event"] == "call_ended"]
        return dict(ended[-1].get("latency_ms") or {}) if ended else {}


def record_paths(path: str | Path) -> tuple[Path, Path | None]:
    """The event log and the recording (None if absent) of a record named by either file or
    by their common stem."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".wav", ".jsonl") else p
    events = stem.with_name(stem.name + ".jsonl")
    wav = stem.with_name(stem.name + ".wav")
    if not events.exists():
        raise FileNotFoundError(f"no event log {events}")
    return events, wav if wav.exists() else None


def load_record(path: str | Path) -> RecordTimeline:
    events_path, wav_path = record_paths(path)
    tl = RecordTimeline()
    for line in events_path.read_text().splitlines():
        if line.strip():
            tl.events.append(json.loads(line))
    channels: list[array[int]] = []
    rate = 16000
    if wav_path is not None:
        with wave.open(str(wav_path), "rb") as w:
            n, rate = w.getnchannels(), w.getframerate()
            samples = array("h", w.readframes(w.getnframes()))
        channels = [samples[c::n] for c in range(n)]
        tl.envelopes = [_envelope(ch, rate) for ch in channels]
        tl.bot = _stretches(channels[-1], rate, threshold=1.0)
        tl.end = len(channels[-1]) / rate
    _read_events(tl)
    if not tl.speech and channels:
        tl.speech = _stretches(channels[0], rate, threshold=SPEECH_RMS)
    tl.end = max([tl.end] + [e["t"] for e in tl.events])
    return tl


def _read_events(tl: RecordTimeline) -> None:
    started: float | None = None
    for e in tl.events:
        t, kind = e["t"], e["event"]
        if kind == "speech_started":
            started = t
        elif kind == "turn_ended" and started is not None:
            tl.speech.append([started, t])
            started = None
        elif kind in ("barge_in", "stop_audio"):
            tl.stops.append(t)
            tl.heard_ms.append((t, e.get("heard_ms", 0.0)))
            if kind == "barge_in":
                tl.barge_ins.append(t - e.get("stop_latency_ms", 0.0) / 1000)
        elif kind == "dtmf":
            tl.dtmf.append((t, str(e.get("tone"))))
        elif kind == "transcript" and e.get("text"):
            tl.transcripts.append((t, str(e.get("who")), str(e["text"])))
    if started is not None:
        tl.speech.append([started, started + 1.0])


def _rms(frame: array[int]) -> float:
    return math.sqrt(sum(s * s for s in frame) / len(frame)) if frame else 0.0


def _stretches(channel: array[int], rate: int, threshold: float) -> list[list[float]]:
    """Where a channel is above `threshold` RMS, as merged [start, end] stretches."""
    step = int(rate * FRAME_S)
    out: list[list[float]] = []
    for i in range(0, len(channel), step):
        if _rms(channel[i : i + step]) >= threshold:
            t = i / rate
            if out and t - out[-1][1] <= MERGE_GAP:
                out[-1][1] = t + FRAME_S
            else:
                out.append([t, t + FRAME_S])
    return out


def _envelope(channel: array[int], rate: int) -> tuple[list[float], list[int], list[int]]:
    step = max(1, len(channel) // ENVELOPE_BINS)
    times, lows, highs = [], [], []
    for i in range(0, len(channel), step):
        piece = channel[i : i + step]
        times.append(i / rate)
        lows.append(min(piece))
        highs.append(max(piece))
    return times, lows, highs
