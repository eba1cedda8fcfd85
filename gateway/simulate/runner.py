"""The load simulator's engine: N real-time simulated ACS calls from one Trio process.

Owns: connecting calls (ramp-up and upgrade; the socket and TLS are `link.Link`), the one
ticker that sends every call's frames, and each call's course from its connection to its
hang-up. Never: one call's frames, reading and accounting (`sim_call`), the run's settings
(`options`), what a call says (`script`), formatting (`report`), or other processes
(`workers`).

Why it is built this way (so that it is never the bottleneck of a load test):
- One ticker task for all calls, on absolute deadlines 1 ms apart. Call i sends in sub-tick
  i % 20 of every 20 ms period, as independently started calls would. A frame's lateness is
  measured against its own deadline (`SimulatorHealth.send_lateness`); if the ticker falls
  behind it catches up tick by tick, so lateness is counted, never hidden.
- One task per call, which reads what the gateway sends (`SimCall.read`); the call's sends
  are the ticker's.

When the script is over, a call whose server echoes waits up to `ECHO_DRAIN` for the frames
still in flight before it hangs up.

Resource handling: every call's socket is closed before its task returns (a close frame and up
to `CLOSE_TIMEOUT` for the reply; a scripted hang-up resets the connection instead).
Error handling: a failing call is counted in its `errors` by kind (each kind once) and never
affects another.
"""

from __future__ import annotations

import gc
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import trio

from ..acs import client
from ..acs.packets import FRAME_MS
from .link import ConnectFailed, Link
from .options import Options
from .recording import Entry
from .results import CallResult, SimulatorHealth
from .sim_call import SimCall
from .tagging import AudioFrames

PHASES: Final = 20  # sub-ticks per 20 ms frame period
SUB_TICK: Final = FRAME_MS / 1000 / PHASES
CLOSE_TIMEOUT: Final = 2.0  # seconds to wait for the gateway's close reply
ECHO_DRAIN: Final = 1.0  # seconds an echoed call waits for its last frames before hanging up


class Engine:
    """Runs a set of calls in this process; `progress` is read by the progress display."""

    def __init__(
        self, options: Options, indices: range | list[int], start_at: float | None = None
    ) -> None:
        self.options = options
        self.scenario = options.scenario()
        self.audio = AudioFrames()
        # One generator per call, seeded from (seed, index): a call does the same whichever
        # worker process runs it.
        self.calls = [
            SimCall(i, self.scenario, options, random.Random(_seed(options.seed, i)), self.audio)
            for i in indices
        ]
        self.start_at = start_at  # wall-clock time.time() at which call 0 starts (workers)
        self.health = SimulatorHealth()
        self.buckets: list[list[SimCall]] = [[] for _ in range(PHASES)]
        self.up = 0
        url = urlsplit(options.url)
        if url.scheme not in ("ws", "wss") or not url.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {options.url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "wss" else 80)
        self.resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.ssl_context = options.ssl_context()
        self.token = options.token or None

    def progress(self) -> dict[str, int]:
        return {
            "calls": len(self.calls),
            "up": self.up,
            "sent": sum(c.result.frames_sent for c in self.calls),
            "received": sum(c.result.frames_received for c in self.calls),
            "errors": sum(sum(c.result.errors.values()) for c in self.calls),
        }

    async def run(self) -> tuple[list[CallResult], SimulatorHealth]:
        # What exists now (clips, calls) lives until the end: keep it out of full collections,
        # whose pauses would stall the ticker (the gateway does the same, docs/performance-echo.md).
        gc.freeze()
        cpu0 = _cpu_seconds()
        wall0 = trio.current_time()
        t0 = wall0 if self.start_at is None else wall0 + (self.start_at - time.time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker, t0)
            async with trio.open_nursery() as calls:
                n = max(1, self.options.calls)
                for call in self.calls:
                    calls.start_soon(self._call, call, t0, self.options.ramp * call.index / n)
            nursery.cancel_scope.cancel()
        self.health.cpu_seconds.append(_cpu_seconds() - cpu0)
        self.health.wall_seconds.append(trio.current_time() - wall0)
        return [c.result for c in self.calls], self.health

    async def _ticker(self, t0: float) -> None:
        tick = 0
        lateness = self.health.send_lateness
        audio = self.audio
        while True:
            due = t0 + tick * SUB_TICK
            if trio.current_time() < due:
                await trio.sleep_until(due)
            now = trio.current_time()
            bucket = self.buckets[tick % PHASES]
            if bucket:
                bucket[:] = [c for c in bucket if c.tick(now, due, lateness, audio)]
            tick += 1

    async def _call(self, call: SimCall, t0: float, offset: float) -> None:
        await trio.sleep_until(t0 + offset)
        result = call.result
        result.started = round(trio.current_time() - t0, 3)
        link = None
        try:
            with trio.fail_after(self.options.connect_timeout):
                link = await Link.open(self.host, self.port, self.ssl_context)
                leftover = await self._upgrade(link, call)
        except BaseException as exc:
            if link is not None:
                link.close()
            match exc:
                case trio.TooSlowError():
                    result.ended("connect_timeout")
                case ConnectFailed(kind=kind):
                    result.ended(kind)
                case client.UpgradeRefused(status=status):
                    result.ended(f"upgrade_refused_{status}" if status else "upgrade_refused")
                case OSError():
                    result.ended("connect_failed")
                case _:
                    raise
            return
        call.link = link
        result.connected = True
        self.up += 1
        try:
            await self._converse(call, link, leftover)
        finally:
            self.up -= 1
            call.finish(trio.current_time())
            link.close()

    async def _upgrade(self, link: Link, call: SimCall) -> bytes:
        headers = client.acs_headers(call.result.connection_id, str(uuid.uuid4()), self.token)
        host = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        request, accept = client.upgrade_request(host, self.resource, headers)
        await link.send_all(request)
        buffer = bytearray()
        while True:
            data = await link.recv()
            if not data:
                raise client.UpgradeRefused(0, "connection closed during the upgrade")
            buffer += data
            used = client.parse_upgrade_response(buffer, accept)
            if used is not None:
                return bytes(buffer[used:])

    async def _converse(self, call: SimCall, link: Link, leftover: bytes) -> None:
        result = call.result
        now = trio.current_time()
        call.started = now
        metadata = client.metadata_text(self.scenario.sample_rate)
        if call.recording is not None:
            call.recording.entries.append(Entry(0.0, "sent", metadata))
        link.send_nowait(client.masked_text(metadata, call.mask))
        self.buckets[call.index % PHASES].append(call)
        with call.scope:
            await call.read(link, leftover)
        if call.hang_up:
            result.ended("hung_up")
            link.abort()
            return
        if result.end is not None:
            return
        # The script is over. An echo still has frames in flight: wait for them (bounded).
        if not call.drained():
            with trio.move_on_after(ECHO_DRAIN):
                await call.read(link, b"", until=call.drained)
            if result.end is not None:
                return
        # Hang up like ACS, with a close frame, and read until the reply. Both are bounded: a
        # gateway that stopped reading must not hold the simulator.
        with trio.move_on_after(CLOSE_TIMEOUT) as wait:
            try:
                await link.send_all(client.masked_close(1000, call.mask))
            except OSError:
                result.ended("connection_lost")
                return
            await call.read(link, b"")
        if wait.cancelled_caught:
            result.ended("close_timeout")


def _seed(seed: int | None, index: int) -> str | None:
    return None if seed is None else f"{seed}/{index}"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def run_in_process(
    options: Options,
    indices: range | list[int] | None = None,
    *,
    start_at: float | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    progress_every: float = 1.0,
) -> tuple[list[CallResult], SimulatorHealth]:
    engine = Engine(options, indices if indices is not None else range(options.calls), start_at)
    async with trio.open_nursery() as nursery:
        if on_progress is not None:

            async def report_progress() -> None:
                while True:
                    await trio.sleep(progress_every)
                    on_progress(engine.progress())

            nursery.start_soon(report_progress)
        outcome = await engine.run()
        nursery.cancel_scope.cancel()
    return outcome
