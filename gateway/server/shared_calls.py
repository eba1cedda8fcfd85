"""The gateway-wide count of live calls, shared by the workers of one supervisor.

Owns: a small file the supervisor creates in its private directory and every worker maps: one
8-byte slot per worker, each written only by its own worker (and zeroed by the supervisor once
that worker has exited). Never: awaits, or holds its lock across anything but a few memory
reads and one write.

`max_calls` means the whole gateway: a worker admits a call only if the sum of every slot is
under the limit, and it checks and takes the place under an exclusive `flock` on the file, so
two workers admitting at the same moment cannot both take the last place. The lock is held for
microseconds, once per admitted call (never per frame); the kernel drops it if a worker dies
holding it. Shared rather than divided among the workers: the kernel spreads connections over
the workers by a hash, so with a divided limit one worker could refuse while the gateway has
room, and `/readyz` could not say whether the next call would be admitted.

The supervisor reads the same sum for its `/readyz` (no lock: a moment's skew is harmless).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Final

SLOT: Final = struct.Struct("=q")  # one worker's live calls
CALLS_FILE_ENV: Final = "ACS_MEDIA_GATEWAY_CALLS_FILE"


class SharedCalls:
    """The live-call slots of `workers` processes; `index` is this process's slot (None in the
    supervisor, which only reads and clears)."""

    def __init__(self, path: str, workers: int | None = None, index: int | None = None) -> None:
        """`workers`: slots to make (the supervisor); None: as many as the file has."""
        self.path = path
        self.index = index
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if workers is not None and os.fstat(self._fd).st_size < SLOT.size * workers:
            os.ftruncate(self._fd, SLOT.size * workers)
        size = os.fstat(self._fd).st_size
        self.workers = size // SLOT.size
        if index is not None and not 0 <= index < self.workers:
            os.close(self._fd)
            raise ValueError(f"{path}: no slot {index} of {self.workers}")
        self._map = mmap.mmap(self._fd, size)

    @classmethod
    def create(cls, directory: str, workers: int) -> SharedCalls:
        """The supervisor's side: a fresh file of zeroed slots in `directory`."""
        path = os.path.join(directory, "live-calls")
        if os.path.exists(path):
            os.unlink(path)
        return cls(path, workers)

    @classmethod
    def from_environ(cls, index: int) -> SharedCalls | None:
        """A worker's side, from `$ACS_MEDIA_GATEWAY_CALLS_FILE` (None when not a worker)."""
        path = os.environ.pop(CALLS_FILE_ENV, "")
        return cls(path, index=index) if path else None

    def total(self) -> int:
        return sum(SLOT.unpack_from(self._map, i * SLOT.size)[0] for i in range(self.workers))

    def own(self) -> int:
        assert self.index is not None
        return int(SLOT.unpack_from(self._map, self.index * SLOT.size)[0])

    def _add(self, slot: int, n: int) -> None:
        offset = slot * SLOT.size
        SLOT.pack_into(self._map, offset, SLOT.unpack_from(self._map, offset)[0] + n)

    def try_reserve(self, limit: int) -> bool:
        """Take one place if the gateway has fewer than `limit` live calls."""
        assert self.index is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if self.total() >= limit:
                return False
            self._add(self.index, 1)
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        assert self.index is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._add(self.index, -1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def clear(self, slot: int) -> None:
        """The supervisor's side: worker `slot` has exited, its calls count no more."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            SLOT.pack_into(self._map, slot * SLOT.size, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
