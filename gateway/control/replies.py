"""What the control plane's webhooks answer, and what it counts.

Owns: `HttpAnswer` (a plain HTTP reply the server sends as is), `ControlStats` (the one owner
of the control plane's counts: `gateway.ops.control_metrics.ControlMetrics` derives its
counters from `ControlStats.totals` at each flush) and `refused`, which counts and logs every
refusal. Never: I/O.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Final

import attrs
import orjson

from ..ops.control_metrics import ControlTotals

log = logging.getLogger("gateway.control")

RECENT_LATENCIES: Final = 1024  # the latest answer latencies kept for tests and `show`


@attrs.frozen
class HttpAnswer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(status: int, value: object) -> HttpAnswer:
    return HttpAnswer(status, orjson.dumps(value), "application/json")


def text_answer(status: int, text: str) -> HttpAnswer:
    return HttpAnswer(status, text.encode())


@attrs.define
class ControlStats:
    """The control plane's counts (HTTP requests, answers, callbacks)."""

    incoming_calls: int = 0
    answers: Counter[str] = attrs.field(factory=Counter)  # answered, failed, timeout, duplicate
    callbacks: Counter[str] = attrs.field(factory=Counter)  # by event type (short name)
    refused: Counter[str] = attrs.field(factory=Counter)  # webhook and media refusals, by reason
    # requests to other replicas, by "operation:outcome" (events:ok, media:410, media:unreachable)
    replica_requests: Counter[str] = attrs.field(factory=Counter)
    # event received -> answered, the latest only (the histogram in /metrics has them all)
    answer_seconds: deque[float] = attrs.field(factory=lambda: deque(maxlen=RECENT_LATENCIES))

    def totals(self) -> ControlTotals:
        return ControlTotals(
            incoming_calls=self.incoming_calls,
            answers=self.answers,
            callbacks=self.callbacks,
            refused=self.refused,
            replica_requests=self.replica_requests,
        )


def refused(stats: ControlStats, reason: str, answer: HttpAnswer) -> HttpAnswer:
    """Count and log a refused webhook; `answer` unchanged."""
    stats.refused[reason] += 1
    log.info("webhook refused with %d (%s)", answer.status, reason)
    return answer
