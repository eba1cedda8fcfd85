"""The `process_*` series (CPU, memory, descriptors), read so that they survive sandboxing.

Owns: reading this process's own figures, and giving them to Prometheus: as a collector (one
process), or as gauges in prometheus-client's multiprocess files, labelled by worker (a worker
of `--workers N`, whose supervisor serves `/metrics` for all). Never: reads `/proc/stat` or any
`/proc` file outside `/proc/self`.

Why not prometheus-client's own `ProcessCollector`: it reads `/proc/self/stat` and, for the
boot time, `/proc/stat`; systemd's `ProcSubset=pid` (in the shipped unit) hides `/proc/stat`,
and the collector then yields no series at all. And in multiprocess mode nothing carries a
worker's process figures to the supervisor. Here: CPU from `os.times()`, memory from
`/proc/self/status`, open descriptors from `/proc/self/fd`, their limit from `getrlimit`, and
the start time noted when this module is first imported (at start-up, before any call).
The names and units are prometheus-client's, so dashboards built on them keep working.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

STARTED_AT: Final = time.time()  # this module is imported at start-up
SERIES: Final = {
    "process_cpu_seconds_total": "Total user and system CPU time spent in seconds.",
    "process_resident_memory_bytes": "Resident memory size in bytes.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes.",
    "process_open_fds": "Number of open file descriptors.",
    "process_max_fds": "Maximum number of open file descriptors.",
    "process_start_time_seconds": "Start time of the process since unix epoch in seconds.",
}


def read() -> dict[str, float]:
    """This process's figures, by series name (a figure that cannot be read is left out)."""
    times = os.times()
    figures: dict[str, float] = {
        "process_cpu_seconds_total": times.user + times.system,
        "process_max_fds": float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "process_start_time_seconds": STARTED_AT,
    }
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                for field, name in ((b"VmRSS:", "resident"), (b"VmSize:", "virtual")):
                    if line.startswith(field):  # "VmRSS:     51200 kB"
                        figures[f"process_{name}_memory_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        figures["process_open_fds"] = float(len(os.listdir("/proc/self/fd")))
    except OSError:
        pass
    return figures


class ProcessCollector(Collector):
    """This process's `process_*` series, for a registry served by this process."""

    def collect(self) -> Iterator[Metric]:
        for name, value in read().items():
            family: Metric
            if name.endswith("_total"):
                family = CounterMetricFamily(name[: -len("_total")], SERIES[name], value=value)
            else:
                family = GaugeMetricFamily(name, SERIES[name], value=value)
            yield family


def use_in(registry: CollectorRegistry) -> None:
    """Serve this collector in `registry` instead of prometheus-client's (when it is there)."""
    import prometheus_client

    if registry is prometheus_client.REGISTRY:
        try:
            registry.unregister(prometheus_client.PROCESS_COLLECTOR)
        except KeyError:
            pass  # already replaced
    registry.register(ProcessCollector())


class WorkerProcessGauges:
    """A worker's figures as multiprocess gauges (`liveall`: a `pid` label, and gone once the
    supervisor marks the worker dead), with a `worker` label; `update()` at each flush."""

    def __init__(self, worker: str) -> None:
        self.gauges = {
            name: Gauge(name, doc, ("worker",), registry=None, multiprocess_mode="liveall")
            for name, doc in SERIES.items()
        }
        self.worker = worker

    def update(self) -> None:
        for name, value in read().items():
            self.gauges[name].labels(self.worker).set(value)


class WithSupervisor(Collector):
    """The workers' families from `inner` (a multiprocess collector), with the supervisor's
    own figures added to each `process_*` family (`worker="supervisor"`)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        own = read()
        labels = {"worker": "supervisor", "pid": str(os.getpid())}
        seen = set()
        for family in self.inner.collect():
            if family.name in own:
                seen.add(family.name)
                family.add_sample(family.name, labels, own[family.name])
            yield family
        for name in own.keys() - seen:  # no worker has written one yet
            family = GaugeMetricFamily(name, SERIES[name], labels=list(labels))
            family.add_metric(list(labels.values()), own[name])
            yield family
