"""Prometheus metrics: the media server's counts as Prometheus series, brought up to date cheaply.

Owns: the media server's metric objects (names, help, labels, buckets), the flush that brings
them up to date (the control plane's series, `gateway.ops.control_metrics`, included; what both
build their series with is `gateway.ops.series`). Never: counts an event itself
(the server's `ServerStats` is the one owner of every count: the counters here are derived from
it), a per-call label (unbounded cardinality), a Prometheus call per frame, or the event loop's
time for I/O.

Derived, not counted twice. `follow(totals)` names where the counts come from; `flush()` reads
the `Totals` (ended calls plus the live calls' own `CallStats`) and advances each Prometheus
counter by what changed since the last flush. Prometheus' multiprocess mode only sees values written
through metric objects, which is why the counters are advanced rather than collected. The
flush runs every `FLUSH_INTERVAL` seconds and before each scrape, so `/metrics` is exact when
it is read in this process; another process (the supervisor) sees it at most that late.

Hot path. A frame costs the gateway about 60 us, and a prometheus-client `Counter.inc()` about
0.6 us (a lock, and in multiprocess mode an mmap write), `Histogram.observe()` about 1.4 us. So
per-frame counts stay in the call's `CallStats`, and per-frame timings go into a
`LocalHistogram` (a bisect and two adds) that the flush moves into the Prometheus histogram.

Process figures (`process_*`) come from `gateway.ops.process_metrics`, which survives the
shipped unit's sandboxing: a collector in the one-process daemon, and in a worker gauges written
at each flush, labelled `worker`, that the supervisor serves with its own figures beside them.

Several processes. In a worker (`PROMETHEUS_MULTIPROC_DIR` set), every value written here goes
to that directory's files, which the supervisor sums (`gateway.ops.registry`); live calls is a
`livesum` gauge there, so an exited worker's calls stop counting.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import attrs
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..call.outcome import EndReason
from . import process_metrics
from .control_metrics import ControlMetrics
from .registry import multiprocess_dir, render
from .series import NAMESPACE, LocalHistogram

WORKER_INDEX_ENV: Final = "ACS_MEDIA_GATEWAY_WORKER"  # set by the supervisor in each worker
FLUSH_INTERVAL: Final = 1.0  # seconds; how far live calls' counters may lag between scrapes

# Seconds. Processing latency and pacing lateness are tiny when all is well and grow by whole
# frames (20 ms) under overload; call duration spans seconds to hours.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
    float("inf"),
)
CALL_DURATION_BUCKETS: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    float("inf"),
)
# Why a connection was closed unread at accept (gateway.server.serve).
CONNECTION_REFUSALS: Final = (
    "max_pending_handshakes",
    "max_pending_handshakes_per_source",
    "no_fds",
)
# Seconds. The latencies a caller feels: a reply within a second is good, several is broken.
FELT_LATENCY_BUCKETS: Final = (
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    float("inf"),
)
_ENDED_BY: Final = tuple(EndReason)  # every label value, exported at 0 from the start


@attrs.frozen
class Totals:
    """Every count the counters show, each a total since the start, live calls included. The
    counts' owner makes it (`gateway.server.stats.ServerStats.totals`); fields are named after
    the counters they feed."""

    live_calls: int
    calls_accepted: int
    calls_failed: int
    frames_in: int
    frames_out: int
    inbound_dropped: int
    stop_audio_sent: int
    flood_dropped: int
    unread_at_end: int
    calls_ended: Mapping[str, int]  # by ended_by
    calls_refused: Mapping[str, int]  # by the HTTP status sent
    handshakes_failed: Mapping[str, int]  # by reason
    auth_failed: Mapping[str, int]  # by reason
    protocol_errors: Mapping[str, int]  # by reason
    upstream_errors: Mapping[str, int]  # by kind
    outbound_dropped: Mapping[str, float]  # seconds, by reason
    connections_refused: Mapping[str, int] = attrs.field(factory=dict)  # by reason
    accept_errors: Mapping[str, int] = attrs.field(factory=dict)  # by errno name
    tool_calls: Mapping[str, int] = attrs.field(factory=dict)  # by outcome
    realtime: Mapping[str, int] = attrs.field(factory=dict)  # realtime bridges' events, by event


class Metrics:
    """The gateway's metrics in one registry. A new private registry by default (tests, several
    servers in one process); the daemon passes prometheus-client's global `REGISTRY`, which
    also carries the process figures (CPU, memory, file descriptors: `process_metrics`, in
    place of prometheus-client's collector; in a worker, as its labelled gauges) and GC."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self._process: process_metrics.WorkerProcessGauges | None = None
        if r is prometheus_client.REGISTRY:
            worker = os.environ.get(WORKER_INDEX_ENV)
            if multiprocess_dir() is not None and worker is not None:
                self._process = process_metrics.WorkerProcessGauges(worker)
            else:
                process_metrics.use_in(r)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, tuple(labels), namespace=NAMESPACE, registry=r)

        self.live_calls = Gauge(
            "live_calls",
            "Calls admitted and not yet ended.",
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.gc_frozen_objects = Gauge(
            "gc_frozen_objects",
            "Objects the cyclic garbage collector no longer walks (gateway.ops.collector): "
            "flat at equal load; growth at equal load is memory kept by frozen cycles.",
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls_accepted = counter("calls_accepted", "WebSocket upgrades accepted as calls.")
        self.calls_refused = counter(
            "calls_refused", "Handshakes refused, by the HTTP status sent.", ["status"]
        )
        self.calls_failed = counter(
            "calls_failed", "Calls ended by a processor error or a gateway bug (closed 1011)."
        )
        self.calls_ended = counter(
            "calls_ended", "Calls ended, by who or what ended them.", ["ended_by"]
        )
        self.handshakes_failed = counter(
            "handshakes_failed",
            "Connections that never became a call: timeout, or not a valid WebSocket upgrade.",
            ["reason"],
        )
        self.frames_in = counter("audio_frames_in", "Inbound AudioData frames decoded.")
        self.frames_out = counter("audio_frames_out", "Outbound audioData frames sent to ACS.")
        self.frames_dropped = counter(
            "frames_dropped",
            "Inbound packets dropped by a channel policy, by policy.",
            ["policy"],
        )
        self.inbound_dropped = self.frames_dropped.labels("inbound_queue_full")
        self.flood_dropped = self.frames_dropped.labels("flood")  # max_frames_per_second
        self.auth_failed = counter(
            "auth_failed", "Handshakes whose ACS token failed the check, by reason.", ["reason"]
        )
        self.outbound_dropped = counter(
            "outbound_audio_dropped_seconds",
            "Seconds of audio a processor played that never reached ACS, by reason.",
            ["reason"],
        )
        self.stop_audio_sent = counter("stop_audio_sent", "stopAudio messages sent (barge-in).")
        self.protocol_errors = counter(
            "protocol_errors", "Malformed inbound packets, by reason.", ["reason"]
        )
        self.upstream_errors = counter(
            "upstream_errors",
            "Errors talking to a processor's upstream service, by kind.",
            ["kind"],
        )
        self.tool_calls = counter(
            "tool_calls", "Tools a realtime model called, by outcome.", ["outcome"]
        )
        self.realtime_events = counter(
            "realtime_events",
            "What realtime bridges did, by event: barge_in, false_interruption, reconnect, "
            "session_rollover, history_turn_dropped, and the caller's audio not heard by the "
            "model: caller_frame_not_sent (no session), mix_late_frame (too late to mix), "
            "mix_wait_expired (mixed without a late speaker).",
            ["event"],
        )
        self.connections_refused = counter(
            "connections_refused",
            "Connections closed at once, unread, before any handshake, by reason.",
            ["reason"],
        )
        self.accept_errors = counter(
            "accept_errors",
            "accept() failures on the media port (out of descriptors or memory), by error.",
            ["error"],
        )
        self.config_reloads = counter(
            "config_reloads", "SIGHUP configuration reloads, by result.", ["result"]
        )
        self.processing_latency = Histogram(
            "processing_latency_seconds",
            "Inbound packet: from the socket read that completed it to the moment the "
            "processor took it from the call's inbound queue.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.pacing_lateness = Histogram(
            "pacing_lateness_seconds",
            "Outbound audio: how late the send task released frames after the playout "
            "deadline it slept until.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.call_duration = Histogram(
            "call_duration_seconds",
            "Calls: from the accepted upgrade to the end of the call.",
            namespace=NAMESPACE,
            registry=r,
            buckets=CALL_DURATION_BUCKETS,
        )
        self.felt_latency = {  # per route: the processor's name (few values, not per call)
            kind: Histogram(
                f"{kind}_latency_seconds",
                doc,
                ["route"],
                namespace=NAMESPACE,
                registry=r,
                buckets=buckets,
            )
            for kind, doc, buckets in (
                (
                    "response",
                    "From the end of the caller's turn to the first bot audio released.",
                    FELT_LATENCY_BUCKETS,
                ),
                (
                    "barge_in_stop",
                    "From the caller starting to speak over the bot to stop-audio.",
                    # the gateway's own reaction: milliseconds when it keeps up
                    LATENCY_BUCKETS,
                ),
                (
                    "first_audio",
                    "From the start of a call to its first bot audio released.",
                    FELT_LATENCY_BUCKETS,
                ),
            )
        }
        self.recordings_stopped = counter(
            "recordings_stopped",
            "Call recordings ended early by a failing disk (the calls went on), by route.",
            ["route"],
        )
        # Show every series from the start (0, not absent), so rates and alerts work at once.
        for ended_by in _ENDED_BY:
            self.calls_ended.labels(ended_by)
        for reason in ("timeout", "invalid"):
            self.handshakes_failed.labels(reason)
        for reason in ("stop", "discarded", "unsent_at_end"):
            self.outbound_dropped.labels(reason)
        self.frames_dropped.labels("unread_at_end")
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result)
        for status in ("401", "403", "429", "503"):
            self.calls_refused.labels(status)
        for reason in CONNECTION_REFUSALS:
            self.connections_refused.labels(reason)

        self.processing = LocalHistogram(LATENCY_BUCKETS)
        self.lateness = LocalHistogram(LATENCY_BUCKETS)
        self.durations = LocalHistogram(CALL_DURATION_BUCKETS)
        self._totals: Callable[[], Totals] | None = None
        self._shown: dict[object, float] = {}  # each derived series' total as last written
        self.control: ControlMetrics | None = None  # only a gateway that answers calls has one

    def add_control(self) -> ControlMetrics:
        """The control plane's series (registered once, on first use)."""
        if self.control is None:
            self.control = ControlMetrics(self.registry)
        return self.control

    def follow(self, totals: Callable[[], Totals]) -> None:
        """Derive the counters from `totals()` (the server's counts) at every flush."""
        self._totals = totals

    def flush(self) -> None:
        """Bring Prometheus up to date with the counts and the local histograms."""
        if self._totals is not None:
            self._derive(self._totals())
        if self._process is not None:
            self._process.update()
        self.gc_frozen_objects.set(gc.get_freeze_count())
        self.processing.flush_into(self.processing_latency)
        self.lateness.flush_into(self.pacing_lateness)
        self.durations.flush_into(self.call_duration)
        if self.control is not None:
            self.control.flush()

    def latency(self, kind: str, route: str, seconds: float) -> None:
        """A latency a caller felt (`gateway.records`): once per turn, so observed at once."""
        self.felt_latency[kind].labels(route).observe(seconds)

    def recording_stopped(self, route: str) -> None:
        """A call's recording stopped: its disk failed (`gateway.records`); rare, so at once."""
        self.recordings_stopped.labels(route).inc()

    def _derive(self, t: Totals) -> None:
        self.live_calls.set(t.live_calls)
        for counter, total in (
            (self.calls_accepted, t.calls_accepted),
            (self.calls_failed, t.calls_failed),
            (self.frames_in, t.frames_in),
            (self.frames_out, t.frames_out),
            (self.inbound_dropped, t.inbound_dropped),
            (self.stop_audio_sent, t.stop_audio_sent),
            (self.flood_dropped, t.flood_dropped),
            (self.frames_dropped.labels("unread_at_end"), t.unread_at_end),
        ):
            self._advance(counter, total)
        for family, by_label in (
            (self.calls_ended, t.calls_ended),
            (self.calls_refused, t.calls_refused),
            (self.handshakes_failed, t.handshakes_failed),
            (self.auth_failed, t.auth_failed),
            (self.protocol_errors, t.protocol_errors),
            (self.upstream_errors, t.upstream_errors),
            (self.outbound_dropped, t.outbound_dropped),
            (self.connections_refused, t.connections_refused),
            (self.accept_errors, t.accept_errors),
            (self.tool_calls, t.tool_calls),
            (self.realtime_events, t.realtime),
        ):
            for label, value in by_label.items():
                self._advance(family.labels(label), value)

    def _advance(self, counter: Counter, total: float) -> None:
        """Add to `counter` what `total` gained since the last flush."""
        shown = self._shown.get(counter, 0.0)
        if total > shown:
            counter.inc(total - shown)
            self._shown[counter] = total

    async def flush_periodically(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every `interval` seconds (absolute deadlines), so that a scrape in another
        process (the supervisor, multiprocess mode) sees live calls at most that late."""
        import trio  # the module stays importable by the supervisor without an event loop

        deadline = trio.current_time()
        while True:
            deadline += interval
            await trio.sleep_until(deadline)
            self.flush()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format `accept` asks for (text 0.0.4 or OpenMetrics), after a
        flush: what it shows is exact at the moment of the scrape."""
        self.flush()
        return render(self.registry, accept)
