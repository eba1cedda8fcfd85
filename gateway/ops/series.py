"""What every metrics module builds its series with: the name prefix, and `LocalHistogram`.

Owns: `NAMESPACE` and `LocalHistogram`, the per-process histogram that keeps per-frame timings
off prometheus-client until a flush (`gateway.ops.metrics` says why). Never: a metric object, a
registry or a count.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

from prometheus_client import Histogram

NAMESPACE: Final = "acs_gateway"  # every series' name starts acs_gateway_


class LocalHistogram:
    """Observations kept in this process until `flush_into` a Prometheus histogram with the
    same buckets: `observe` costs a bisect and two adds, no lock, no mmap write."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        if not self.bounds or self.bounds[-1] != float("inf"):
            raise ValueError("the last bucket must be +Inf")
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are `le` (value <= bound): bisect_left finds the first such bound.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush_into(self, histogram: Histogram) -> None:
        """Move what was observed into `histogram` (its buckets must be `self.bounds`)."""
        if not any(self.counts):
            return
        # prometheus-client has no public way to add n observations at once; its histogram
        # keeps one value per bucket (not cumulative) and one for the sum. A test checks that
        # this gives exactly what `observe()` one by one gives.
        buckets = histogram._buckets  # noqa: SLF001
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
                self.counts[i] = 0
        histogram._sum.inc(self.total)  # noqa: SLF001
        self.total = 0.0
