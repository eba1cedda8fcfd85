"""What a call reports: its timings as it goes (`CallTimings`), how it ended (`CallOutcome`),
and the one vocabulary of end reasons (`EndReason`) that logs, metrics and tests share.

Never: decides when a call ends (that is `gateway.call.tasks`) or imports a higher layer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from .interface import Call, CallStats


class EndReason(enum.StrEnum):
    """Who or what ended a call. The values are the `ended_by` metric labels (in this order)."""

    HANGUP = "hangup"  # ACS closed or reset the socket
    PROCESSOR = "processor"  # the processor returned (1000)
    PROCESSOR_ERROR = "processor_error"  # the processor raised (1011)
    PROTOCOL = "protocol"  # too many malformed packets in a row (1007)
    TIMEOUT = "timeout"  # no metadata in time (1007)
    CANCELLED = "cancelled"  # cancelled from outside: the server drained it
    GATEWAY_ERROR = "gateway_error"  # a bug in the gateway (the server's error boundary)
    FLOOD = "flood"  # inbound messages beyond the rate for too long (1008)
    IDLE = "idle"  # no inbound audio for `idle_timeout` (1000)
    MAX_DURATION = "max_duration"  # the call reached `max_call_duration` (1000)
    SEND_TIMEOUT = "send_timeout"  # the peer stopped reading (no close frame)


@attrs.define
class CallOutcome:
    """How a call ended: the first `EndReason`, the close code sent or received (None when
    cancelled), its counters, the processor's `Call` (None if it never started) and the
    processor's exception, if it raised."""

    ended_by: EndReason
    close_code: int | None
    stats: CallStats
    call: Call | None = None
    error: BaseException | None = None


@attrs.frozen
class CallTimings:
    """Where a call reports its timings, in seconds (`gateway.ops.metrics` provides them).

    - `processing`: per inbound packet, from the socket read that completed it to the moment
      the processor took it from the inbound channel.
    - `pacing_lateness`: per release by the send task after sleeping until a playout deadline,
      how late it ran.
    """

    processing: Callable[[float], None]
    pacing_lateness: Callable[[float], None]
