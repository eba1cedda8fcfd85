"""`CallRecord`: one call's observer (recording, event log, latencies); `Records`: makes them.

Owns: which records a call keeps (decided from the configuration when the call is accepted),
the file names, the latencies users feel (`LATENCIES`), and what each observed moment becomes
in the event log. Never: touches the disk (`gateway.records.disk` does), lets a failing disk
reach the call (the recording stops, the call goes on), or works per frame beyond what the
recording and the latencies need.

Latencies, in seconds, per route (the call's route name, or the processor's when not routed):
- `response`: the caller's turn ended (`turn_ended`: the model's speech_stopped, or local VAD)
  -> the first bot audio released to ACS after it. Of several turn ends before that audio the
  last counts (a pause the model did not take as the end of the turn is not its end); a turn
  end while the bot is audible starts no measurement (its reply, or another, is playing).
- `barge_in_stop`: the caller started speaking over the bot (`speech_started`) -> stop-audio.
- `first_audio`: the call started (its first metadata) -> the first bot audio released.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from ..acs.packets import AudioData, DtmfData, InboundPacket, TranscriptionData
from ..call.interface import Call
from ..call.observer import NO_OBSERVER, CallObserver
from ..call.outcome import CallOutcome
from .disk import DISK, DiskThread, enforce_retention
from .events import EventLog
from .recording import AudioRecording
from .tracing import CallTrace

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("gateway.records")

LATENCIES: Final = ("response", "barge_in_stop", "first_audio")
RETENTION_INTERVAL: Final = 60.0  # seconds between retention sweeps (at a call's start)
REPLY_GAP: Final = 0.25  # seconds of bot silence that separate two replies
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
NAME_FIELDS: Final = ("started", "connection_id", "correlation_id", "route")


class LatencySink(Protocol):
    """Where latencies and lost recordings are counted (`gateway.ops.metrics.Metrics`)."""

    def latency(self, kind: str, route: str, seconds: float) -> None: ...

    def recording_stopped(self, route: str) -> None: ...


@attrs.frozen
class RecordSettings:
    """What records calls keep; `from_config` reads them from `Config`."""

    recording: bool = False
    events: bool = False
    directory: str = "recordings"
    name: str = "{started}_{connection_id}"
    participants: int = 1  # 4: unmixed audio, one channel per participant heard
    max_age: float = 0.0  # seconds; 0: no limit
    max_bytes: int = 0  # 0: no limit
    buffer_seconds: float = 10.0

    @classmethod
    def from_config(cls, config: Config, route: str | None = None) -> RecordSettings:
        """The settings for a call on `route` (a `[[routes]]` name): its own `recording` and
        `call_events` where it sets them, the top-level ones otherwise."""
        chosen = next((r for r in config.routes if r.name == route), None)
        recording = None if chosen is None else chosen.recording
        events = None if chosen is None else chosen.call_events
        return cls(
            recording=config.recording if recording is None else recording,
            events=config.call_events if events is None else events,
            directory=config.recording_dir,
            name=config.recording_name,
            participants=4 if config.recording_unmixed else 1,
            max_age=config.recording_max_age_days * 86400,
            max_bytes=config.recording_max_bytes,
            buffer_seconds=config.recording_buffer_seconds,
        )


def safe(value: str | None) -> str:
    """A value from the peer, fit for a file name: [A-Za-z0-9._-], at most 64, no leading dot."""
    cleaned = _UNSAFE.sub("_", value or "none")[:64].lstrip(".")
    return cleaned or "none"


def file_stem(pattern: str, fields: Mapping[str, str | None]) -> str:
    return pattern.format(**{k: safe(v) for k, v in fields.items()}).replace(os.sep, "_")


class Records:
    """One per server: opens each call's record, and sweeps retention now and then."""

    def __init__(
        self, latency: LatencySink | None = None, disk: DiskThread = DISK, tracer: Any = None
    ) -> None:
        self.latency = latency
        self.disk = disk
        self.tracer = tracer  # an OpenTelemetry tracer (`gateway.records.tracing`), or None
        self._swept_at = -RETENTION_INTERVAL
        self.opened = 0

    def open(
        self, settings: RecordSettings, headers: Mapping[str, str], route: str
    ) -> CallObserver:
        """The observer of a new call: `NO_OBSERVER` when it keeps nothing."""
        if not (settings.recording or settings.events) and self.latency is self.tracer is None:
            return NO_OBSERVER
        stem = None
        if settings.recording or settings.events:
            self._prepare(settings)
            stem = os.path.join(
                settings.directory,
                file_stem(
                    settings.name,
                    {
                        "started": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                        "connection_id": headers.get("x-ms-call-connection-id"),
                        "correlation_id": headers.get("x-ms-call-correlation-id"),
                        "route": route,
                    },
                ),
            )
        self.opened += 1
        return CallRecord(settings, route, stem, self.latency, self.disk, self.tracer)

    def _prepare(self, settings: RecordSettings) -> None:
        directory, disk = settings.directory, self.disk
        now = time.monotonic()
        limited = bool(settings.max_age or settings.max_bytes)
        sweep = limited and now - self._swept_at >= RETENTION_INTERVAL
        if sweep:
            self._swept_at = now

        def job() -> None:
            os.makedirs(directory, exist_ok=True)
            if sweep:
                enforce_retention(
                    directory, settings.max_age, settings.max_bytes, keep=disk.open_paths
                )

        disk.submit(job)


class CallRecord:
    """One call's `CallObserver`: see the module docstring."""

    def __init__(
        self,
        settings: RecordSettings,
        route: str,
        stem: str | None,
        latency: LatencySink | None,
        disk: DiskThread = DISK,
        tracer: Any = None,
    ) -> None:
        self.settings = settings
        self.tracer = tracer
        self.trace: CallTrace | None = None
        self.route = route
        self.stem = stem
        self.sink = latency
        self.disk = disk
        self.audio: AudioRecording | None = None  # None once it stopped
        self.recording: AudioRecording | None = None  # kept for the call's end
        self.events: EventLog | None = None
        self.start = 0.0
        self.latencies: dict[str, list[float]] = {kind: [] for kind in LATENCIES}
        self._first_audio = True
        self._turn_ended: float | None = None  # awaiting the reply's first audio
        self._speech_at: float | None = None  # the caller started speaking here
        self._reply_start: float | None = None  # playout time the current reply began
        self._bot_end = -1.0  # playout time the bot audio released so far ends
        self._bytes_per_second = 1

    # -- CallObserver --

    def started(self, call: Call, now: float) -> None:
        self.start = now
        s, audio = self.settings, call.audio
        if audio is not None:
            self._bytes_per_second = 2 * audio.sample_rate
        if self.stem is not None and s.recording and audio is not None:
            channels = s.participants + 1
            pending = int(s.buffer_seconds * self._bytes_per_second * channels)
            self.audio = AudioRecording(
                self.stem + ".wav",
                audio.sample_rate,
                now,
                participants=s.participants,
                max_pending=pending,
                disk=self.disk,
            )
            self.recording = self.audio
        if self.stem is not None and s.events:
            self.events = EventLog(self.stem + ".jsonl", now, self.disk)
        if self.tracer is not None:
            self.trace = CallTrace(self.tracer, now, call.correlation_id)
            self.trace.started(
                now,
                {
                    "acs.call_connection_id": call.connection_id,
                    "acs.correlation_id": call.correlation_id,
                    "gateway.route": self.route,
                    "url.path": call.path,
                    "gateway.sample_rate": call.sample_rate,
                },
            )
        self._event(
            now,
            "call_started",
            connection_id=call.connection_id,
            correlation_id=call.correlation_id,
            route=self.route,
            path=call.path,
            sample_rate=call.sample_rate,
            recording=None if self.audio is None else os.path.basename(self.audio.path),
            channels=None if self.audio is None else self.audio.channels,
        )

    def caller_audio(self, packet: AudioData, now: float) -> None:
        audio = self.audio
        if audio is not None:
            audio.caller(packet.pcm, packet.participant_raw_id, now)
            if audio.closed and audio.failed is not None:
                self._recording_failed(now)

    def caller_packet(self, packet: InboundPacket, now: float) -> None:
        if type(packet) is DtmfData:
            self._event(now, "dtmf", tone=packet.tone, participant=packet.participant_raw_id)
        elif type(packet) is TranscriptionData:
            self._event(
                now,
                "transcript",
                who="caller",
                text=packet.text,
                status=packet.result_status,
                participant=packet.participant_raw_id,
            )

    def bot_audio(self, frames: list[bytes], start: float) -> None:
        n = 0
        for pcm in frames:
            n += len(pcm)
        if start > self._bot_end + REPLY_GAP or self._reply_start is None:
            self._reply_start = start
        self._bot_end = start + n / self._bytes_per_second
        if self._first_audio:
            self._first_audio = False
            self._measure("first_audio", start - self.start, start)
        if self._turn_ended is not None:
            self._measure("response", start - self._turn_ended, start)
            if self.trace is not None:
                self.trace.turn_ended(start, answered=True, latency=start - self._turn_ended)
            self._turn_ended = None
        if self.audio is not None:
            self.audio.bot(frames, start)

    def bot_cut(self, now: float) -> None:
        heard = 0.0
        if self._reply_start is not None:
            heard = max(0.0, min(now, self._bot_end) - self._reply_start)
        self._reply_start = None
        self._bot_end = min(self._bot_end, now)
        if self.audio is not None:
            self.audio.cut(now)
        if self._speech_at is not None:
            stop = now - self._speech_at
            self._speech_at = None
            self._measure("barge_in_stop", stop, None)
            fields = {"heard_ms": _ms(heard), "stop_latency_ms": _ms(stop)}
            self._event(now, "barge_in", **fields)
            if self.trace is not None:
                self.trace.event(now, "barge_in", fields)
        else:
            self._event(now, "stop_audio", heard_ms=_ms(heard))

    def note(self, kind: str, **fields: object) -> None:
        now = trio.current_time()
        if kind == "speech_started":
            self._speech_at, self._turn_ended = now, None
        elif kind == "turn_ended":
            self._speech_at = None
            if now >= self._bot_end:  # the bot is silent: its answer is awaited from here
                self._turn_ended = now
        self._event(now, kind, **fields)
        trace = self.trace
        if trace is not None:
            if kind == "speech_started":
                trace.turn_started(now)
            elif kind == "session":
                trace.session_opened(now)
            elif kind == "reconnect":
                trace.session_ended(now, str(fields.get("reason")))
                trace.event(now, kind, fields)
            elif kind == "tool_call":  # the name only: arguments may carry personal data
                trace.event(now, kind, {"name": fields.get("name")})

    def ended(self, outcome: CallOutcome, now: float) -> None:
        if self.audio is not None:
            self.audio.close(now)
        audio = self.recording
        stats = outcome.stats
        self._event(
            now,
            "call_ended",
            ended_by=str(outcome.ended_by),
            close_code=outcome.close_code,
            duration=round(now - self.start, 3),
            audio_frames_in=stats.audio_frames_in,
            barge_ins=stats.barge_ins,
            upstream_reconnects=stats.upstream_reconnects,
            recording_dropped_bytes=None if audio is None else audio.dropped_bytes,
            recording_failed=None if audio is None else audio.failed,
            latency_ms={k: [_ms(v) for v in vs] for k, vs in self.latencies.items() if vs},
        )
        if self.events is not None:
            self.events.close(now)
        if self.trace is not None:
            first = self.latencies["first_audio"]
            self.trace.ended(
                now,
                {
                    "gateway.ended_by": str(outcome.ended_by),
                    "gateway.close_code": outcome.close_code,
                    "gateway.duration_s": round(now - self.start, 3),
                    "gateway.barge_ins": stats.barge_ins,
                    "gateway.upstream_reconnects": stats.upstream_reconnects,
                    "gateway.first_audio_ms": _ms(first[0]) if first else None,
                },
            )

    # -- helpers --

    def _measure(self, kind: str, seconds: float, at: float | None) -> None:
        self.latencies[kind].append(seconds)
        if self.sink is not None:
            self.sink.latency(kind, self.route, seconds)
        if at is not None:
            self._event(at, "latency", kind=kind, ms=_ms(seconds))

    def _event(self, now: float, name: str, /, **fields: Any) -> None:
        events = self.events
        if events is not None:
            events.add(now, name, fields)
            if self.audio is not None and now >= self.audio.next_flush:
                self.audio.flush(now)

    def _recording_failed(self, now: float) -> None:
        assert self.audio is not None
        self._event(now, "recording_stopped", reason=self.audio.failed)
        self.audio = None
        if self.sink is not None:
            self.sink.recording_stopped(self.route)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
