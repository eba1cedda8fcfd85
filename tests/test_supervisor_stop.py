"""The supervisor's stop while a worker is still being spawned, with fake worker processes (the
real ones race: tests/test_workers.py)."""

from __future__ import annotations

import signal
from typing import Any

import trio
from trio.testing import wait_all_tasks_blocked

from gateway.config import load
from gateway.ops.systemd import Notifier
from gateway.server import supervisor as supervisor_module
from gateway.server.supervisor import Supervisor


class FakeWorker:
    """A worker process that never says READY=1 and exits on the first signal it gets."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []
        self._exited = trio.Event()

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        if self.returncode is None:
            self.returncode = -signum
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


async def test_a_stop_waits_for_a_worker_still_being_spawned_and_stops_it_too(monkeypatch):
    spawned: list[FakeWorker] = []
    slow_spawn = trio.Event()  # worker 0's spawn finishes only when this is set
    first_spawned = trio.Event()

    async def open_process(command: list[str], *, env: dict[str, str], **_: Any) -> FakeWorker:
        if env[supervisor_module.WORKER_INDEX_ENV] == "0":
            await slow_spawn.wait()
        process = FakeWorker(1000 + len(spawned))
        spawned.append(process)
        first_spawned.set()
        return process

    monkeypatch.setattr(supervisor_module.trio.lowlevel, "open_process", open_process)
    config = load(environ={}, overrides={"host": "127.0.0.1", "port": 0, "workers": 2})
    supervisor = Supervisor(config, ["serve"], Notifier(None))
    async with trio.open_nursery() as nursery:
        exit_code: list[int] = []

        async def run() -> None:
            exit_code.append(await supervisor.run())

        nursery.start_soon(run)
        await first_spawned.wait()
        await wait_all_tasks_blocked()
        assert len(spawned) == 1  # worker 1 is up; worker 0 is still being spawned
        supervisor.drain()  # SIGTERM now
        await spawned[0].wait()
        await wait_all_tasks_blocked()  # worker 1's exit is handled; worker 0's spawn goes on
        assert spawned[0].returncode == -signal.SIGTERM
        assert not exit_code  # the supervisor waits for worker 0
        slow_spawn.set()
    late = spawned[1]
    assert late.signals == [signal.SIGTERM]  # spawned after the signal went out: told at once
    assert exit_code == [0]
    assert [w.exit_code for w in supervisor.workers] == [0, 0]
