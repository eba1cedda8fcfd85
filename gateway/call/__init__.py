"""One call: its nursery and tasks, what it takes in, and how its audio is paced out."""

from .run import CallOutcome, CallSettings, CallTimings, run_call

__all__ = ["CallOutcome", "CallSettings", "CallTimings", "run_call"]
