"""The cyclic garbage collector's policy for a process whose live calls hold most of its objects.

Owns: what the collector walks (freezing what it need not walk again). Never: collections of
its own, on a schedule or otherwise.

Why. CPython's full collection walks every tracked object that is not frozen. A bridged call
holds about 340 of them (Trio's tasks, coroutines, frames and cancel scopes), so at 200 bridged
calls a full collection took 31-71 ms, stalling every call at once (ACS holds 60 ms of audio by
default), and came every few dozen new calls; those collections freed 0-58 objects. A call's
objects are freed by reference counting when the call ends: walking them again and again finds
nothing.

So everything loaded at start-up is frozen (`gc.freeze()`), and so is what survives a
collection of the middle or oldest generation: an object that has lived through two collections
belongs to the process or to a live call. Full collections then walk only what is new, and the
young collections still free the cycles that are made and dropped within a few thousand
allocations (a cancelled task's exception and its frames). A cycle that forms among frozen
objects stays until the process exits; `acs_gateway_gc_frozen_objects` shows the count to
operators (flat at equal load when nothing leaks). Measured in docs/performance-realtime.md
("The collector's pauses").
"""

from __future__ import annotations

import gc
from typing import Any


def install() -> None:
    """Freeze what is tracked now, and from now on what survives the older generations'
    collections. Idempotent."""
    gc.freeze()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def uninstall() -> None:
    """Stop freezing survivors (what is frozen stays frozen; `gc.unfreeze()` undoes that)."""
    while _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    # Called by the collector itself, once it has finished ("stop"): the generations are
    # consistent, and freezing only moves their lists into the permanent one.
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()
