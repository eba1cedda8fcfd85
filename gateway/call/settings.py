"""The per-call settings: each one's name, type, default, validator and documentation, once.

Owns: `CallSettings`, the validators its fields use, and the field metadata helpers (`doc`,
`hot`) that the configuration reference is generated from. `gateway.config_settings.Config`
subclasses `CallSettings`, so these fields are config keys (`ACS_GATEWAY_<NAME>`) without a
second copy. Never: reads files or the environment, or imports the layers above the call
(config, server).
"""

from __future__ import annotations

from typing import Any

import attrs

from .playout import check_step


def positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value}")


def at_least_one_frame(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 20:
        raise ValueError(f"{attribute.name} must be at least 20 (one frame), got {value}")


def whole_frames_within_the_lead(
    instance: Any, attribute: attrs.Attribute[Any], value: int
) -> None:
    check_step(value, instance.playout_lead_ms)  # playout_lead_ms is validated before this


def doc(text: str) -> dict[str, Any]:
    """Field metadata: the setting's line in the configuration reference."""
    return {"doc": text}


def hot(text: str) -> dict[str, Any]:
    """A setting SIGHUP may change in a running gateway (`gateway.ops.reload`): calls that
    started keep the value they started with; new calls get the new one."""
    return {"doc": text, "reloadable": True}


@attrs.frozen(kw_only=True)
class CallSettings:
    """What one call runs with (see `gateway.call.run`). Every field is reloadable: a call keeps
    the settings it started with."""

    metadata_timeout: float = attrs.field(
        default=10.0,
        validator=positive,
        metadata=hot("Seconds from upgrade to the first AudioMetadata/TranscriptionMetadata."),
    )
    inbound_queue_ms: int = attrs.field(
        default=1000,
        validator=at_least_one_frame,
        metadata=hot("Audio a processor may fall behind before frames are dropped (counted)."),
    )
    playout_lead_ms: int = attrs.field(
        default=60,
        validator=at_least_one_frame,
        metadata=hot(
            "How far ahead of real time audio is sent to ACS (bounds audio after barge-in); "
            "a paced frame may go up to 5 ms sooner, when the pacer is awake for another call's."
        ),
    )
    playout_step_ms: int = attrs.field(
        default=20,
        validator=whole_frames_within_the_lead,
        metadata=hot(
            "Paced audio goes to ACS in writes of this much: the send side wakes when ACS holds "
            "`playout_lead_ms` less this, and tops it up to the lead. Whole frames, at most the "
            "lead less one. 40 halves a reply's wake-ups and socket writes; raise the lead by "
            "20 with it to keep ACS's margin for late frames."
        ),
    )
    playout_catchup_ms: int = attrs.field(
        default=100,
        validator=attrs.validators.ge(0),
        metadata=hot(
            "After ACS ran dry for at most this long (a stall), the lead stretches by that gap: "
            "the late audio goes at once instead of being held. 0: never."
        ),
    )
    playout_queue_ms: int = attrs.field(
        default=5000,
        validator=at_least_one_frame,
        metadata=hot("Outbound audio a call may queue; `play()` blocks beyond it."),
    )
    hangup_grace: float = attrs.field(
        default=2.0,
        validator=positive,
        metadata=hot(
            "Seconds a processor has to return after ACS hangs up before it is cancelled."
        ),
    )
    max_consecutive_errors: int = attrs.field(
        default=50,
        validator=positive,
        metadata=hot("Malformed packets in a row that close the call (1007)."),
    )
    max_frames_per_second: int = attrs.field(
        default=250,
        validator=positive,
        metadata=hot("Inbound messages a call may send a second (bursts of one second's worth)."),
    )
    flood_grace: float = attrs.field(
        default=5.0,
        validator=positive,
        metadata=hot("Seconds a call may flood past that rate before it is closed (1008)."),
    )
    idle_timeout: float = attrs.field(
        default=300.0,
        validator=positive,
        metadata=hot("Seconds without inbound audio that close the call (1000)."),
    )
    max_call_duration: float = attrs.field(
        default=14400.0,
        validator=positive,
        metadata=hot("Seconds a call may last; then it is closed (1000)."),
    )
