"""Call records: what the caller heard (a recording), what happened (an event log), and the
latency users feel, per call. `Records` is made once per server; `Records.open` gives each call
its `CallRecord` (the call's `gateway.call.observer.CallObserver`). See docs/records.md.
"""

from __future__ import annotations

from .record import CallRecord, LatencySink, Records, RecordSettings

__all__ = ["CallRecord", "LatencySink", "RecordSettings", "Records"]
