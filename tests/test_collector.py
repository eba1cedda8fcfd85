"""The garbage collector's policy (`gateway.ops.collector`): what survives the older
generations' collections is frozen; young cycles are still freed. Each check runs in a fresh
interpreter, so this test process's collector is left as it is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import gc, weakref
from gateway.ops import collector

class Node:
    pass

def walked(obj):
    return any(o is obj for o in gc.get_objects())
"""


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_what_survives_the_middle_generation_is_frozen_and_young_cycles_are_still_freed():
    out = run(
        """
        collector.install()
        kept = Node()
        gc.collect(1)  # kept survives a collection of the middle generation
        print(walked(kept), gc.get_freeze_count() > 0)
        a, b = Node(), Node()  # a cycle made and dropped while young
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect(0)
        print(gone() is None)
        """
    )
    assert out.splitlines() == ["False True", "True"]


def test_without_the_policy_survivors_are_walked_again():
    """The control: the same object, collector not installed, stays in the older generations
    that every full collection walks."""
    out = run(
        """
        kept = Node()
        gc.collect(1)
        print(walked(kept))
        """
    )
    assert out == "True"


def test_a_cycle_among_frozen_objects_stays_until_unfrozen():
    """The policy's price: garbage made of frozen objects is freed only once they are unfrozen
    (reference counting still frees frozen objects that are not in a cycle)."""
    out = run(
        """
        collector.install()
        a, b, alone = Node(), Node(), Node()
        a.other, b.other = b, a
        gc.collect(1)  # all three frozen
        cycle, single = weakref.ref(a), weakref.ref(alone)
        del a, b, alone
        gc.collect()
        print(cycle() is None, single() is None)
        collector.uninstall()
        gc.unfreeze()
        gc.collect()
        print(cycle() is None)
        """
    )
    assert out.splitlines() == ["False True", "True"]


def test_install_is_idempotent_and_uninstall_removes_it():
    out = run(
        """
        collector.install()
        collector.install()
        print(gc.callbacks.count(collector._freeze_survivors))
        collector.uninstall()
        print(gc.callbacks.count(collector._freeze_survivors))
        """
    )
    assert out.splitlines() == ["1", "0"]
