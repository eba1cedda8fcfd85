"""Prometheus registries on the reading side: a scrape's rendering, and several worker
processes' values summed into one registry.

Owns: rendering a registry for a scrape (text 0.0.4 or OpenMetrics, as the scraper accepts),
whether this process is in multiprocess mode, the supervisor's aggregating registry, and what a
worker's exit does to it. Never: a metric object or a count (those are `gateway.ops.metrics`'s
and `gateway.ops.control_metrics`'s; the aggregating registry holds none of its own).

Several processes. With `PROMETHEUS_MULTIPROC_DIR` set (the supervisor sets it for its
workers), prometheus-client writes every value to files in that directory, and
`multiprocess_registry()` sums them for the supervisor's `/metrics`, with the supervisor's own
process figures beside the workers' (`gateway.ops.process_metrics`). Live calls is a `livesum`
gauge: the supervisor calls `worker_exited(pid)` when a worker ends, so a dead worker's calls
stop counting; its counters stay in the totals.
"""

from __future__ import annotations

import os

import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess

from . import process_metrics


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """`(body, content_type)` for a scrape of `registry`."""
    encoder, content_type = prometheus_client.exposition.choose_encoder(accept or "")
    return encoder(registry), content_type


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, if this process is in it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that sums every worker's values from the multiprocess directory (for the
    supervisor's `/metrics`). Never register metric objects in it."""
    registry = CollectorRegistry()
    workers = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]  # untyped upstream
    registry.register(process_metrics.WithSupervisor(workers))
    return registry


def worker_exited(pid: int, path: str | None = None) -> None:
    """A worker process ended: its live gauge values no longer count (its counters still do)."""
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # untyped upstream
