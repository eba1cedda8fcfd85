"""`Pacer`: one timer for the send tasks of every call in a process.

Owns: waking a parked send task at (or up to `SLACK` after) the deadline its player asked for.
Never: holds a call's resources. An entry only refers to the player's parking lot; if the call
has ended, unparking an empty lot does nothing, and the entry is dropped when it falls due.

Why: a Trio timeout (`move_on_at` around a park) costs about four times a plain wake-up, and a
send task releasing paced audio (a bot's reply, or an echo after a hiccup) needs one every
20 ms. Here a single task sleeps until the earliest deadline and wakes every send task due by
then, so the cost of the timeout is shared, and deadlines within `SLACK` are served together.
A late wake by at most `SLACK` is harmless: the playout lead window is tens of milliseconds.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Final

import trio

SLACK: Final = 0.001  # seconds; wakes due within 1 ms of each other are served by one timer


class Pacer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, trio.lowlevel.ParkingLot]] = []
        self._order = count()  # ties: first come, first woken; never compare lots
        self._rescheduled = trio.lowlevel.ParkingLot()  # the pacer task waits here

    def __len__(self) -> int:
        return len(self._heap)

    def wake_at(self, deadline: float, lot: trio.lowlevel.ParkingLot) -> None:
        """Unpark `lot` once `deadline` has passed."""
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (deadline, next(self._order), lot))
        if earliest is None or deadline < earliest:
            self._rescheduled.unpark_all()  # the pacer must sleep less

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].unpark_all()
            if heap:
                with trio.move_on_at(heap[0][0] + SLACK):
                    await self._rescheduled.park()
            else:
                await self._rescheduled.park()
