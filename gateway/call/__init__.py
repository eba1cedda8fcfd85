"""One call: its nursery and tasks, what it takes in, and how its audio is paced out."""

from .outcome import CallOutcome, CallTimings, EndReason
from .run import run_call
from .settings import CallSettings

__all__ = ["CallOutcome", "CallSettings", "CallTimings", "EndReason", "run_call"]
