"""Prometheus metrics of the control plane (answering calls): its counts as Prometheus series,
brought up to date the way the media server's are.

Owns: the control plane's metric objects (names, help, labels, buckets), `ControlTotals` (the
counts they are derived from) and their flush. Never: counts an event itself (the control
plane's `ControlStats`, `ControlPlane.stats`, is the one owner of its counts: the counters here
are derived from it), a per-call label, or a registry of its own: `Metrics.add_control()`
registers these series in the media server's registry, only in a gateway that answers calls, and
`Metrics.flush()` flushes them (`gateway.ops.metrics`, which also says why counters are derived
and timings kept in a `LocalHistogram` until the flush).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram

from .series import NAMESPACE, LocalHistogram

INF: Final = float("inf")

# Seconds: the gateway's part of answering is milliseconds; a media connection after the answer
# waits for ACS, usually well under a second.
ANSWER_LATENCY_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, INF)


@attrs.frozen
class ControlTotals:
    """The control plane's counts, each a total since the start
    (`gateway.control.replies.ControlStats.totals`)."""

    incoming_calls: int
    answers: Mapping[str, int]  # by result: answered, failed, timeout, duplicate
    callbacks: Mapping[str, int]  # by event type (short name)
    refused: Mapping[str, int]  # webhook and media refusals, by reason
    # requests to other replicas, by "operation:outcome" (`gateway.control.replicas`)
    replica_requests: Mapping[str, int] = attrs.Factory(dict)


class ControlMetrics:
    """The control plane's series: counters derived from `ControlTotals` at each flush, and
    its two latencies kept in `LocalHistogram`s until then."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, tuple(labels), namespace=NAMESPACE, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(
                name, doc, namespace=NAMESPACE, registry=registry, buckets=ANSWER_LATENCY_BUCKETS
            )

        self.incoming_calls = counter("incoming_calls", "IncomingCall events with the secret.")
        self.answers = counter("answers", "Answers to incoming calls, by result.", ["result"])
        self.callbacks = counter("callbacks", "Call Automation callbacks, by event type.", ["type"])
        self.refused = counter(
            "control_refused", "Webhooks and media connections refused, by reason.", ["reason"]
        )
        self.replica_requests = counter(
            "replica_requests",
            "Requests to the replica holding or answering a call, by operation and outcome.",
            ["operation", "outcome"],
        )
        self.answer_latency = histogram(
            "answer_latency_seconds",
            "IncomingCall: from the Event Grid post read to the answer request handed to the SDK.",
        )
        self.media_connect_latency = histogram(
            "media_connect_latency_seconds",
            "Answered calls: from ACS's answer reply to the call's media WebSocket accepted.",
        )
        for result in ("answered", "failed", "timeout", "duplicate"):
            self.answers.labels(result)
        self.answering = LocalHistogram(ANSWER_LATENCY_BUCKETS)
        self.media_connecting = LocalHistogram(ANSWER_LATENCY_BUCKETS)
        self._totals: Callable[[], ControlTotals] | None = None
        self._shown: dict[object, float] = {}

    def follow(self, totals: Callable[[], ControlTotals]) -> None:
        self._totals = totals

    def flush(self) -> None:
        if self._totals is not None:
            t = self._totals()
            self._advance(self.incoming_calls, t.incoming_calls)
            for family, by_label in (
                (self.answers, t.answers),
                (self.callbacks, t.callbacks),
                (self.refused, t.refused),
            ):
                for label, value in by_label.items():
                    self._advance(family.labels(label), value)
            for key, value in t.replica_requests.items():
                operation, _, outcome = key.partition(":")
                self._advance(self.replica_requests.labels(operation, outcome), value)
        self.answering.flush_into(self.answer_latency)
        self.media_connecting.flush_into(self.media_connect_latency)

    def _advance(self, counter: Counter, total: float) -> None:
        shown = self._shown.get(counter, 0.0)
        if total > shown:
            counter.inc(total - shown)
            self._shown[counter] = total
