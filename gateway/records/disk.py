"""The disk thread: one per process, where every record file is opened, written and removed.

Owns: the queue of jobs (plain functions) and the thread that runs them in order, the set of
files open for writing, and retention (`enforce_retention`: the oldest files go first, until
none is older than the age limit and all of them fit the byte limit). Never: runs on the event
loop, blocks a producer (`submit` only appends to a queue; producers bound themselves by the
bytes they have in flight), or lets a job's exception end the thread.

Why one thread and not `trio.to_thread.run_sync` per write: a write is submitted from the
call's hot path, which must not await, and one thread keeps each file's writes in order.
Woken by a job, the thread waits `GATHER` for the others of that moment and runs them all: at
200 recorded calls it sleeps and wakes (for a job or for the GIL) about 40 times a second
rather than 500, and takes the GIL from the event loop in a few bursts, not at every write.
At exit the queue is drained for at most `EXIT_DRAIN` seconds, so a clean shutdown loses
nothing; a killed process loses at most what was still queued (about a second per call).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

log = logging.getLogger("gateway.records")

EXIT_DRAIN: Final = 5.0  # seconds a clean exit waits for queued writes
GATHER: Final = 0.1  # seconds the thread waits, once woken, for more jobs to come
RECORD_SUFFIXES: Final = (".wav", ".jsonl")  # what retention may remove

Job = Callable[[], None]


class DiskThread:
    """Runs submitted jobs in order on one daemon thread, started on first use."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.open_paths: set[str] = set()  # touched by the thread only
        self.failed_jobs = 0

    def submit(self, job: Job) -> None:
        if self._thread is None:
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="gateway-records", daemon=True)
                thread.start()
                self._thread = thread
                atexit.register(self.wait_idle, EXIT_DRAIN)

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            # Let the other calls' writes of this moment gather: one wake-up (and one round of
            # taking the GIL from the event loop) serves them all.
            time.sleep(GATHER)
            while job is not None:
                try:
                    job()
                except Exception:  # a job's bug must not end the thread (and every recording)
                    self.failed_jobs += 1
                    log.exception("a record job failed")
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
            else:
                return

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every job submitted so far has run (tests, exit). False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put(done.set)
        return done.wait(timeout)


DISK: Final = DiskThread()


def enforce_retention(
    directory: str | Path,
    max_age: float,
    max_bytes: int,
    keep: Iterable[str] = (),
    now: float | None = None,
) -> list[str]:
    """Remove record files, oldest first (by modification time), while any is older than
    `max_age` seconds (0: no limit) or all of them take more than `max_bytes` (0: no limit).
    Files in `keep` (open for writing) are never removed. Returns the paths removed."""
    now = time.time() if now is None else now
    kept = set(keep)
    files: list[tuple[float, int, str]] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.endswith(RECORD_SUFFIXES) or entry.path in kept:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, entry.path))
    files.sort()
    total = sum(size for _, size, _ in files)
    removed = []
    for mtime, size, path in files:
        too_old = max_age > 0 and now - mtime > max_age
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big):
            break
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("retention could not remove %s: %s", path, exc)
            continue
        total -= size
        removed.append(path)
    if removed:
        log.info("retention removed %d record file(s) from %s", len(removed), directory)
    return removed
