"""A census of what a process holds: live Trio tasks, open file descriptors, resident memory.

Owns: the counts leak checks compare (tests) and the soak and fuzz benchmarks print. Never:
changes anything it counts.
"""

from __future__ import annotations

import os

import trio


def task_count() -> int:
    """Tasks alive in this Trio run (walks the task tree from the root). Iterative: a
    recursive closure would itself be a reference cycle, garbage in every census."""
    root = trio.lowlevel.current_root_task()
    if root is None:  # only before the run's first task exists: nothing to count yet
        return 0
    count, pending = 0, [root]
    while pending:
        task = pending.pop()
        count += 1
        pending.extend(child for n in task.child_nurseries for child in n.child_tasks)
    return count


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
