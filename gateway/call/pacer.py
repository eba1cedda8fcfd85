"""`Pacer`: one timer for the send sides of every call in a process.

Owns: telling each waiter, at the deadline it asked for (or up to `coalesce` after it, or up to
`early` before it), that its deadline has come (`Waiter.deadline_passed`). Never: holds a call's
resources, or knows what a waiter does when told (a player writes its due frames, on this task).
An entry refers to its waiter only; a call that has ended, or moved its deadline since, ignores
the news, and the entry is dropped when it falls due (a player's deadline is never more than its
playout lead and catch-up ahead: an ended call's objects outlive it here by at most that,
closed).

Why: a Trio timeout (`move_on_at` around a park) costs about four times a plain wake-up, and a
call releasing paced audio (a bot's reply, or an echo after a hiccup) needs one every 20 ms.
Here a single task sleeps until the earliest deadline (plus `coalesce`) and serves every waiter
due by then, so the cost of the timeout is shared, and a player whose socket can take the
frames writes them from this task without waking its send task (`gateway.call.player`).
Deadlines close together are served by one wake-up even with `coalesce` at 0: epoll's timeout
is whole milliseconds, rounded up. A wake is late by that rounding, plus `coalesce`, plus
whatever else the loop was doing; each waiter measures its own lateness.

Early. Once awake, the pacer also serves the deadlines of the next `early` seconds (5 ms). A
player told early releases what is due at its deadline, as it would then: its playout clock is
absolute, so what ACS plays, and when, does not change, and ACS holds at most `early` more
than the lead (65 ms rather than 60). With few calls, whose deadlines are a millisecond or more
apart, each of them otherwise cost a wake-up of its own (`bench/pacer_wakes.py --early`).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Final, Protocol

import trio

SLACK: Final = 0.001  # seconds; on an idle loop a wake is at most this late (epoll's rounding)
COALESCE: Final = 0.0  # seconds the pacer sleeps past the earliest deadline: see pacer_wakes.py
EARLY: Final = 0.005  # seconds before its deadline a waiter may be told: see "Early", above


class Waiter(Protocol):
    def deadline_passed(self, deadline: float, now: float) -> None:
        """`deadline` (as given to `wake_at`) has passed; `now` is the time. Must not block or
        raise."""


class Pacer:
    def __init__(self, coalesce: float = COALESCE, early: float = EARLY) -> None:
        self.coalesce = coalesce
        self.early = early
        self._heap: list[tuple[float, int, Waiter]] = []
        self._order = count()  # ties: first come, first served; never compare waiters
        self._rescheduled = trio.lowlevel.ParkingLot()  # the pacer task waits here

    def __len__(self) -> int:
        return len(self._heap)

    def wake_at(self, deadline: float, waiter: Waiter) -> None:
        """Tell `waiter` once `deadline` has passed."""
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (deadline, next(self._order), waiter))
        if earliest is None or deadline < earliest:
            self._rescheduled.unpark_all()  # the pacer must sleep less

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now + self.early:  # see "Early", above
                deadline, _, waiter = heapq.heappop(heap)
                # The time now, not at the top of the loop: serving many calls' frames takes
                # milliseconds, and each waiter's lateness and release are measured on the clock.
                waiter.deadline_passed(deadline, trio.current_time())
            if heap:
                with trio.move_on_at(heap[0][0] + self.coalesce):
                    await self._rescheduled.park()
            else:
                await self._rescheduled.park()
