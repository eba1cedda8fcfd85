"""OpenTelemetry traces of calls (the optional `otel` extra): a span per call, child spans per
model session and per turn, barge-ins as span events.

Owns: the span names and attributes, the trace context a call's spans join (its trace id is the
call's correlation id, when that is a GUID, so every service that sees the call can find the
same trace), and setting up the exporter from the standard `OTEL_*` environment variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...). Never: imports OpenTelemetry unless
tracing is on (no cost without the extra), or runs per frame (a span per turn at most).

Spans carry the call's own clock: each timestamp is the wall-clock time of the call's start plus
the call-clock seconds since, so durations are exact (and virtual time works in tests).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Final

log = logging.getLogger("gateway.records")

INSTALL_HINT: Final = "tracing needs the otel extra: pip install 'acs-media-gateway[otel]'"
INSTRUMENTATION: Final = "gateway.records"


def tracer_from_environment() -> Any | None:
    """A tracer exporting over OTLP/HTTP as the `OTEL_*` variables say; None (logged) without
    the `otel` extra."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(INSTALL_HINT)
        return None
    provider = TracerProvider()  # its resource comes from OTEL_SERVICE_NAME and friends
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer(INSTRUMENTATION)


class CallTrace:
    """One call's spans. Methods take the call clock's `now` (seconds)."""

    def __init__(self, tracer: Any, now: float, correlation_id: str | None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.tracer = tracer
        self._wall_ns = time.time_ns() - int(now * 1e9)
        self._parent = _context_of(correlation_id)
        self.call: Any = None
        self.session: Any = None
        self.turn: Any = None
        self._call_context: Any = None

    def _ns(self, now: float) -> int:
        return self._wall_ns + int(now * 1e9)

    def _child(self, name: str, now: float, **attributes: Any) -> Any:
        return self.tracer.start_span(
            name, context=self._call_context, start_time=self._ns(now), attributes=attributes
        )

    def started(self, now: float, attributes: dict[str, Any]) -> None:
        self.call = self.tracer.start_span(
            "call",
            context=self._parent,
            kind=self._trace.SpanKind.SERVER,
            start_time=self._ns(now),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        self._call_context = self._trace.set_span_in_context(self.call)

    def session_opened(self, now: float) -> None:
        self.session_ended(now, None)
        self.session = self._child("model session", now)

    def session_ended(self, now: float, failure: str | None) -> None:
        if self.session is not None:
            if failure is not None:
                self.session.set_status(self._trace.Status(self._trace.StatusCode.ERROR, failure))
            self.session.end(end_time=self._ns(now))
            self.session = None

    def turn_started(self, now: float) -> None:
        self.turn_ended(now, answered=False)
        self.turn = self._child("turn", now)

    def turn_ended(self, now: float, answered: bool, latency: float | None = None) -> None:
        if self.turn is not None:
            self.turn.set_attribute("gateway.turn.answered", answered)
            if latency is not None:
                self.turn.set_attribute("gateway.response_latency_ms", round(latency * 1000, 1))
            self.turn.end(end_time=self._ns(now))
            self.turn = None

    def event(self, now: float, name: str, attributes: dict[str, Any]) -> None:
        clean = {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)}
        for span in (self.call, self.turn):
            if span is not None:
                span.add_event(name, clean, timestamp=self._ns(now))

    def ended(self, now: float, attributes: dict[str, Any]) -> None:
        self.turn_ended(now, answered=False)
        self.session_ended(now, None)
        if self.call is not None:
            for key, value in attributes.items():
                if value is not None:
                    self.call.set_attribute(key, value)
            self.call.end(end_time=self._ns(now))


def _context_of(correlation_id: str | None) -> Any:
    """A remote parent whose trace id is the correlation id (a GUID); None: a new trace."""
    try:
        trace_id = uuid.UUID(correlation_id or "").int
    except ValueError:
        return None
    if not trace_id:
        return None
    from opentelemetry import trace

    span_id = (trace_id & 0xFFFF_FFFF_FFFF_FFFF) or 1
    parent = trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))
