"""The load simulator's engine: N real-time simulated ACS calls from one Trio process.

Owns: connecting calls (ramp-up and upgrade; the socket and TLS are `link.Link`), the one
ticker that sends every call's frames, reading what the gateway sends, and each call's
`CallResult`. Never: what a call says
(`script`), formatting (`report`), or other processes (`workers`).

Why it is built this way (so that it is never the bottleneck of a load test):
- One ticker task for all calls, on absolute deadlines 1 ms apart. Call i sends in sub-tick
  i % 20 of every 20 ms period, as independently started calls would. A frame's lateness is
  measured against its own deadline (`SimulatorHealth.send_lateness`); if the ticker falls
  behind it catches up tick by tick, so lateness is counted, never hidden.
- Sends are non-blocking writes straight from the ticker (TLS: encrypted through a memory BIO
  first). What the kernel does not take waits in the call's backlog for the next tick; a
  gateway that stops reading for `BACKLOG_LIMIT` bytes fails the call (`send_backlog`).
- One reader task per call: one park and one `recv` per wake-up, every frame it completed
  handled at once.

How a call ends is decided once (`CallResult.ended`), by the reader, which sees the server's
close frame even when the ticker's write already failed because the server had hung up: a
close frame before the scenario's end is `closed_early` (or `bot_hung_up` with
`expect_hangup`), an end without one `connection_lost`. When the script is over, a call whose
server echoes waits up to `ECHO_DRAIN` for the frames still in flight before it hangs up.

Resource handling: every call's socket is closed before its task returns (a close frame and up
to `CLOSE_TIMEOUT` for the reply; a scripted hang-up resets the connection instead).
Error handling: a failing call is counted in its `errors` by kind (each kind once) and never
affects another.
"""

from __future__ import annotations

import gc
import inspect
import os
import random
import ssl
import time
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio

from ..acs import client
from ..acs.packets import BYTES_PER_SAMPLE, FRAME_MS
from ..wire import framing
from .link import ConnectFailed, Link
from .recording import Entry, Recording
from .report import CallResult, Histogram, SimulatorHealth, Timeline
from .script import CallScript, Scenario, build_scenario
from .tagging import AudioFrames, b64_pcm_bytes, read_tag

PHASES: Final = 20  # sub-ticks per 20 ms frame period
SUB_TICK: Final = FRAME_MS / 1000 / PHASES
RING: Final = 4096  # frames whose send time is kept for round trips (82 s)
BACKLOG_LIMIT: Final = 1 << 20  # bytes the gateway may leave unread before the call fails
CLOSE_TIMEOUT: Final = 2.0  # seconds to wait for the gateway's close reply
ECHO_DRAIN: Final = 1.0  # seconds an echoed call waits for its last frames before hanging up
EXPECT: Final = ("auto", "echo", "bot")


@attrs.frozen
class Options:
    """Everything a run needs; plain values, so worker processes get it as JSON."""

    url: str
    calls: int = 1
    duration: float = 10.0
    ramp: float = 0.0  # seconds over which calls start, evenly
    sample_rate: int = 16000
    unmixed: bool = False
    speakers: int = 1
    wavs: tuple[str, ...] = ()
    barge_in_after: float | None = None
    barge_in_wav: str | None = None
    dtmf: tuple[tuple[float, str], ...] = ()
    hangup_fraction: float = 0.0
    turn: float = 3.0
    pause: float = 1.5
    reply_timeout: float = 5.0
    expect: str = "auto"  # "echo": count loss, reorder, corruption; "bot": do not; "auto": see
    expect_hangup: bool = False  # the bot ends calls (close 1000) before the scenario does
    token: str | None = None  # sent as "Authorization: Bearer ..."; never printed or saved
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    timeline_calls: int = 0  # the first N calls keep a timeline (for --plot)
    record: str | None = None  # save the first `record_calls` calls here (JSON lines)
    record_calls: int = 1
    seed: int | None = None
    processes: int = 1

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Options:
        obj = dict(obj)
        obj["wavs"] = tuple(obj["wavs"])
        obj["dtmf"] = tuple(tuple(x) for x in obj["dtmf"])
        return cls(**obj)

    def scenario(self) -> Scenario:
        """The Scenario these options describe (raises ValueError for a bad one)."""
        if self.expect not in EXPECT:
            raise ValueError(f"--expect must be one of {', '.join(EXPECT)}, not {self.expect!r}")
        names = inspect.signature(build_scenario).parameters
        return build_scenario(**{name: getattr(self, name) for name in names})

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "wss":
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def record_path(self, index: int) -> Path | None:
        if self.record is None or index >= self.record_calls:
            return None
        path = Path(self.record)
        return (
            path if self.record_calls == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")
        )


class SimCall:
    """One simulated call in the load engine."""

    def __init__(
        self,
        index: int,
        scenario: Scenario,
        options: Options,
        rng: random.Random,
        audio: AudioFrames,
    ) -> None:
        self.index = index
        self.options = options
        self.result = CallResult(index, str(uuid.uuid4()))
        keep = index < options.timeline_calls
        if keep:
            self.result.timeline = Timeline()
        self.script = CallScript(scenario, rng, keep_timeline=keep)
        self.mask = os.urandom(4)
        self.frames = client.ServerFrames()
        self.link: Link | None = None
        self.started = 0.0  # trio time of the call's start (AudioMetadata sent)
        self.k = 0  # next tick of the script
        self.seq = 0  # next audio frame's tag
        self.first_sent: float | None = None
        # When each recent frame left, by tag (-1: none, or already matched). Flat arrays, not
        # tuples: hundreds of calls' rings would otherwise make every full garbage collection
        # walk a million objects while the ticker waits.
        self.sent_seq = array("l", [-1]) * RING
        self.sent_at = array("d", [0.0]) * RING
        self.sent_pcm: list[bytes] = [b""] * RING  # references to the clips' frames
        self.audio = audio
        self.tracks = len(scenario.speakers)
        self.max_echoed = -1  # the highest frame number echoed so far
        self.script_over = False  # the script ran to its end (no hang-up)
        self.answered_barge_ins = 0
        self.scope = trio.CancelScope()
        self.hang_up = False
        self.bytes_per_second = scenario.sample_rate * BYTES_PER_SAMPLE
        path = options.record_path(index)
        self.recording = (
            Recording(scenario.sample_rate, self.result.connection_id) if path else None
        )

    # -- the ticker's side --

    def tick(self, now: float, due: float, lateness: Histogram, audio: AudioFrames) -> bool:
        """Send this tick's frames; False when the call's script is over (or it hung up)."""
        result = self.result
        k = self.k
        self.k += 1
        if k == self.script.hangup_tick:
            self.hang_up = True
            result.hung_up = True
            self.scope.cancel()
            return False
        if k >= self.script.ticks:
            self.script_over = True
            self.scope.cancel()
            return False
        frames = []
        recording = self.recording
        for participant, pcm, silent in self.script.tick(k, now):
            seq = self.seq
            self.seq += 1
            self.sent_seq[seq % RING] = seq
            self.sent_at[seq % RING] = now
            self.sent_pcm[seq % RING] = pcm
            frames.append(audio.frame(pcm, seq, participant, silent))
            if recording is not None:
                text = audio.text(pcm, seq, participant, silent)
                recording.entries.append(Entry(now - self.started, "sent", text))
            lateness.add(now - due)
        result.frames_sent += len(frames)
        for tone in self.script.dtmf_due(k * FRAME_MS / 1000):
            frames.append(client.masked_text(client.dtmf_text(tone), self.mask))
            result.dtmf_sent += 1
            if recording is not None:
                recording.entries.append(Entry(now - self.started, "sent", client.dtmf_text(tone)))
            if result.timeline is not None:
                result.timeline.dtmf.append((now - self.started, tone))
        if self.first_sent is None:
            self.first_sent = now
        assert self.link is not None
        try:
            self.link.send_nowait(b"".join(frames))
        except OSError:
            # The server is gone; the reader decides how (a close frame may be waiting).
            return False
        if len(self.link.backlog) > BACKLOG_LIMIT:
            result.ended("send_backlog")
            self.scope.cancel()
            return False
        return True

    # -- the reader's side --

    def on_message(self, message: bytes, now: float) -> None:
        result = self.result
        if self.recording is not None:
            self.recording.entries.append(Entry(now - self.started, "received", message.decode()))
        kind, data, form = client.classify_form(message)
        forms = result.forms
        forms[form] = forms.get(form, 0) + 1
        timeline = result.timeline
        if kind == client.AUDIO:
            result.frames_received += 1
            seconds = b64_pcm_bytes(data) / self.bytes_per_second
            result.audio_ms_received += seconds * 1000
            if result.first_audio_ms is None and self.first_sent is not None:
                result.first_audio_ms = round((now - self.first_sent) * 1000, 2)
            if not self._echo(data, now):
                result.unmatched += 1
                self.script.bot_audio(now, seconds)
            if timeline is not None:
                timeline.add_bot_audio(now - self.started, seconds)
        elif kind == client.STOP:
            result.stop_audio += 1
            self.script.stop_audio(now)
            barge_ins = self.script.barge_ins
            if self.answered_barge_ins < len(barge_ins):
                latency = now - barge_ins[self.answered_barge_ins]
                result.stop_latencies_ms.append(round(latency * 1000, 2))
                self.answered_barge_ins = len(barge_ins)
            if timeline is not None:
                timeline.stop_audio(now - self.started)
        else:
            result.other_received += 1

    def _echo(self, data: str, now: float) -> bool:
        """Match audio to the frame it echoes (False: it echoes no frame awaiting its echo)."""
        seq = read_tag(data)
        if seq is None:
            return False
        slot = seq % RING
        full = self.sent_seq[slot]
        if full < 0 or full & 0xFFFF != seq:
            return False
        self.sent_seq[slot] = -1  # an echo is matched once
        result = self.result
        if not self.audio.is_echo(data, self.sent_pcm[slot], full):
            result.mismatched += 1
            return True
        result.echoed += 1
        if full < self.max_echoed:
            result.reordered += 1
        else:
            self.max_echoed = full
        rtt = now - self.sent_at[slot]
        result.rtt.add(rtt)
        if result.timeline is not None:
            result.timeline.rtt.append((now - self.started, rtt * 1000))
        return True

    def drained(self) -> bool:
        """Every frame of the echoed track has come back (or none ever does)."""
        return self.max_echoed < 0 or self.max_echoed + self.tracks >= self.seq

    def finish(self, now: float) -> None:
        result = self.result
        # The frames that should have come back from an echo: all of the echoed track's when
        # the call ran to its end, up to the last one echoed when the server ended it.
        last = self.seq - 1 if result.end == "completed" or self.max_echoed < 0 else self.max_echoed
        result.echo_expected = (last // self.tracks + 1) if last >= 0 else 0
        if self.script.no_reply and not self.script.barge_ins:
            result.error("no_reply_to_barge_in")
        if self.options.expect_hangup and result.end == "completed":
            result.error("no_hangup")
        result.barge_ins = len(self.script.barge_ins)
        if result.timeline is not None:
            tl = result.timeline
            tl.speech = [[a - self.started, b - self.started] for a, b in self.script.speech or []]
            tl.barge_ins = [t - self.started for t in self.script.barge_ins]
            tl.end = now - self.started
        path = self.options.record_path(self.index)
        if self.recording is not None and path is not None:
            if result.close_code is not None:
                self.recording.entries.append(
                    Entry(now - self.started, "closed", code=result.close_code)
                )
            self.recording.write(path)


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
        # whose pauses would stall the ticker (the gateway does the same, docs/performance.md).
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
            await self._read(call, link, leftover)
        if call.hang_up:
            result.ended("hung_up")
            link.abort()
            return
        if result.end is not None:
            return
        # The script is over. An echo still has frames in flight: wait for them (bounded).
        if not call.drained():
            with trio.move_on_after(ECHO_DRAIN):
                await self._read(call, link, b"", until=call.drained)
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
            await self._read(call, link, b"")
        if wait.cancelled_caught:
            result.ended("close_timeout")

    async def _read(
        self, call: SimCall, link: Link, data: bytes, until: Callable[[], bool] | None = None
    ) -> None:
        """Handle what the gateway sends until the call ends (`result.end` is set), `until()`
        holds, or the caller is cancelled."""
        result = call.result
        while True:
            now = trio.current_time()
            try:
                events = call.frames.receive(data) if data else []
            except framing.FramingError:
                result.ended("protocol_error")
                return
            for event in events:
                if type(event) is bytes:
                    call.on_message(event, now)
                elif isinstance(event, framing.Ping):
                    link.send_nowait(client.pong(bytes(event), call.mask))
                elif isinstance(event, framing.Close):
                    self._closed(call, event, now)
                    try:
                        link.send_nowait(client.masked_close(1000, call.mask))
                    except OSError:
                        pass
                    return
            if until is not None and until():
                return
            try:
                data = await link.recv()
            except OSError:
                data = b""
            if not data:
                result.ended("connection_lost")
                return

    def _closed(self, call: SimCall, close: framing.Close, now: float) -> None:
        """The server's close frame: the reply to ours, the bot's hang-up, or an early end."""
        result = call.result
        result.close_code, result.close_reason = close.code, close.reason
        if call.script_over or call.hang_up:
            result.ended("completed")
            return
        result.closed_at = round(now - call.started, 3)
        if close.code == 1000 and self.options.expect_hangup:
            result.ended("bot_hung_up")
        else:
            result.ended("closed_early")


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
