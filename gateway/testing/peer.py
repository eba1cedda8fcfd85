"""A simulated ACS peer: connects like ACS Call Automation and plays what the gateway sends.

Owns: the ACS side of a media-streaming WebSocket, for tests and load tools. It sends the
handshake headers ACS sends, `AudioMetadata`, then audio at real-time cadence in 20 ms frames
(absolute deadlines from `trio.current_time()`, so it runs on Trio's autojump clock too), for
one mixed stream or several unmixed participants. It records everything the gateway sends back
and models ACS's playback queue: audio plays at real-time rate from a queue, and stop-audio drops
whatever has not been played yet (`AcsPlayback`).

Waits fail loudly: each has a timeout (the call's `timeout`, 5 s unless told, or its own) and
raises `WaitFailed` saying what it waited for and what it saw; a wait whose call closes with its
condition unmet raises at once. When the gateway is an in-process one (`open_gateway`, the
pytest fixtures) and its processor raised, waits and sends raise `ProcessorFailed` chained to
the processor's exception instead.
"""

from __future__ import annotations

import inspect
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import orjson
import pybase64
import trio
import trio_websocket

from ..acs.client import acs_headers, audio_text, dtmf_text, metadata_text
from ..acs.packets import BYTES_PER_SAMPLE, FRAME_MS, frame_bytes
from ..audio.samples import frames as split_frames
from .failures import ProcessorFailed, ProcessorFailures, for_url

DEFAULT_TIMEOUT: Final = 5.0  # seconds a wait waits unless the call or the wait says otherwise


class WaitFailed(AssertionError):
    """A wait of the simulated peer ended with its condition unmet: it timed out, or the call
    closed first. The message says what was awaited and what was seen."""


@attrs.define
class Received:
    """One message from the gateway: `kind` is "audioData", "stopAudio", or "other"."""

    time: float
    kind: str
    pcm: bytes = b""
    raw: str | bytes = ""


@attrs.define
class Segment:
    start: float
    pcm: bytes


class AcsPlayback:
    """ACS's playback queue as the protocol describes it: chunks play back to back in real time;
    stop-audio drops everything not yet played."""

    def __init__(self, sample_rate: int) -> None:
        self.bytes_per_second = sample_rate * BYTES_PER_SAMPLE
        self.segments: list[Segment] = []
        self.end = 0.0  # when the queued audio finishes playing
        self.dropped_bytes = 0

    def add(self, now: float, pcm: bytes) -> None:
        start = max(now, self.end)
        self.segments.append(Segment(start, pcm))
        self.end = start + len(pcm) / self.bytes_per_second

    def stop(self, now: float) -> None:
        kept: list[Segment] = []
        for seg in self.segments:
            if seg.start >= now:
                self.dropped_bytes += len(seg.pcm)
                continue
            played = round((now - seg.start) * self.bytes_per_second)
            played -= played % BYTES_PER_SAMPLE
            if played < len(seg.pcm):
                self.dropped_bytes += len(seg.pcm) - played
                seg = Segment(seg.start, seg.pcm[:played])
            kept.append(seg)
        self.segments = kept
        self.end = min(self.end, now)

    def heard(self, until: float | None = None) -> bytes:
        """The audio the caller heard (up to `until`; all queued audio if None)."""
        out = bytearray()
        for seg in self.segments:
            if until is None or seg.start + len(seg.pcm) / self.bytes_per_second <= until:
                out += seg.pcm
            elif seg.start < until:
                n = round((until - seg.start) * self.bytes_per_second)
                out += seg.pcm[: n - n % BYTES_PER_SAMPLE]
        return bytes(out)


class SimulatedCall:
    """One simulated ACS media stream. Create it with `simulated_call(...)`."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        sample_rate: int,
        connection_id: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = DEFAULT_TIMEOUT,
        failures: ProcessorFailures | None = None,
    ) -> None:
        self.ws = ws
        self.timeout = timeout  # the default of every wait, in seconds
        self._failures = failures
        self.sample_rate = sample_rate
        self.connection_id = connection_id
        self.headers = [h for h in headers if h[0].lower() != "authorization"]  # no secrets kept
        self.started = trio.current_time()
        # Every message both ways, as (time, "sent" | "received", message): what
        # `gateway.simulate.recording.Recording.from_call` saves.
        self.transcript: list[tuple[float, str, str | bytes]] = []
        self.frame_bytes = frame_bytes(sample_rate)
        self.received: list[Received] = []
        self.sent: dict[str | None, bytearray] = {}  # participant -> PCM sent
        self.playback = AcsPlayback(sample_rate)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = trio.Event()
        self._arrivals = trio.lowlevel.ParkingLot()

    # -- what came back --

    @property
    def received_pcm(self) -> bytes:
        """All audio the gateway sent, in order (before any stop-audio drops)."""
        return b"".join(r.pcm for r in self.received if r.kind == "audioData")

    @property
    def stop_times(self) -> list[float]:
        return [r.time for r in self.received if r.kind == "stopAudio"]

    @property
    def audio_after_stop(self) -> list[Received]:
        """Audio that came after the first stop-audio, in the order it arrived (what a barge-in
        should have prevented): order, not time, since both may share an instant."""
        kinds = [r.kind for r in self.received]
        if "stopAudio" not in kinds:
            return []
        first = kinds.index("stopAudio")
        return [r for r in self.received[first:] if r.kind == "audioData"]

    @property
    def audio_times(self) -> list[float]:
        """When each audio message arrived (trio time)."""
        return [r.time for r in self.received if r.kind == "audioData"]

    @property
    def first_audio_latency(self) -> float | None:
        """Seconds from the call's start to the first audio the gateway sent (None: none yet)."""
        times = self.audio_times
        return times[0] - self.started if times else None

    @property
    def processor_error(self) -> Exception | None:
        """What the processor raised in this call (in-process gateways only; else None)."""
        return None if self._failures is None else self._failures.errors.get(self.connection_id)

    async def wait_for_audio(
        self,
        n_bytes: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # waits fail loudly by default
    ) -> None:
        """Wait until the gateway has sent at least `n_bytes` of audio. Raises `WaitFailed`
        after `timeout` seconds (default: the call's) or at once if the call closes first."""
        await self._wait(
            lambda c: len(c.received_pcm) >= n_bytes,
            f"{n_bytes} bytes of audio",
            lambda: f"got {len(self.received_pcm)}",
            timeout,
        )

    async def wait_for(
        self,
        predicate: Callable[[SimulatedCall], Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # waits fail loudly by default
        what: str | None = None,
    ) -> None:
        """Wait until `predicate(self)` is true. Raises `WaitFailed` (naming `what`, or the
        predicate's source) after `timeout` seconds (default: the call's) or at once if the call
        closes with the predicate still false."""
        await self._wait(predicate, what or _describe(predicate), self._seen, timeout)

    async def wait_closed(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # waits fail loudly by default
    ) -> None:
        """Wait until the gateway closes the call (`close_code` says how)."""
        await self._wait(
            lambda c: c.closed.is_set(), "the gateway to close the call", self._seen, timeout
        )

    async def _wait(
        self,
        predicate: Callable[[SimulatedCall], Any],
        what: str,
        seen: Callable[[], str],
        limit_s: float | None,
    ) -> None:
        limit = self.timeout if limit_s is None else limit_s
        with trio.move_on_after(limit):
            while not predicate(self) and not self.closed.is_set():
                await self._arrivals.park()
            if predicate(self):
                return
            self._raise_processor_error()
            raise WaitFailed(f"waited for {what}; {seen()}; {self._state()}")
        self._raise_processor_error()
        raise WaitFailed(f"waited {limit:g} s for {what}; {seen()}; {self._state()}")

    def _seen(self) -> str:
        kinds = [r.kind for r in self.received]
        return (
            f"got {len(self.received_pcm)} bytes of audio in {kinds.count('audioData')} "
            f"message(s), {kinds.count('stopAudio')} stop-audio, {kinds.count('other')} other"
        )

    def _state(self) -> str:
        if not self.closed.is_set():
            return "the call is still open"
        if self.close_code is None:
            return "the connection was lost (no close frame)"
        return f"the gateway closed the call with {self.close_code} {self.close_reason or ''!r}"

    def _raise_processor_error(self) -> None:
        """Raise `ProcessorFailed` if the in-process gateway's processor raised in this call
        (recorded before the gateway sends its close, so a closed call sees it)."""
        error = self.processor_error
        if error is not None:
            raise ProcessorFailed(
                f"the processor raised {error!r} in call {self.connection_id} "
                f"({self._state()}); its traceback is above",
                self.connection_id,
            ) from error

    # -- what ACS sends --

    async def send_raw(self, message: str | bytes) -> None:
        self.transcript.append((trio.current_time(), "sent", message))
        try:
            await self.ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            self._raise_processor_error()
            raise

    async def send_json(self, obj: Any) -> None:
        await self.send_raw(orjson.dumps(obj).decode())

    async def send_metadata(self, sample_rate: int | None = None) -> None:
        await self.send_raw(metadata_text(sample_rate or self.sample_rate))

    async def send_audio(
        self, pcm: bytes, participant: str | None = None, silent: bool = False
    ) -> None:
        await self.send_raw(audio_text(pcm, participant, silent))
        self.sent.setdefault(participant, bytearray()).extend(pcm)

    async def send_dtmf(self, tone: str) -> None:
        await self.send_raw(dtmf_text(tone))

    async def stream(
        self,
        audio: bytes | Mapping[str | None, bytes],
        *,
        realtime: bool = True,
    ) -> None:
        """Send audio in 20 ms frames: one stream (mixed) or {participant: pcm} (unmixed, one
        frame per participant per tick). Real-time cadence on absolute deadlines."""
        tracks = {None: audio} if isinstance(audio, bytes) else dict(audio)
        framed = {p: split_frames(pcm, self.sample_rate) for p, pcm in tracks.items()}
        ticks = max(len(f) for f in framed.values())
        start = trio.current_time()
        for k in range(ticks):
            if realtime:
                await trio.sleep_until(start + k * FRAME_MS / 1000)
            for participant, fs in framed.items():
                if k < len(fs):
                    await self.send_audio(fs[k], participant)

    async def hang_up(self, code: int = 1000) -> None:
        await self.ws.aclose(code)

    # -- plumbing --

    async def _receive(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                self._record(message)
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is not None:
                self.close_code, self.close_reason = exc.reason.code, exc.reason.reason
        finally:
            self.closed.set()
            self._arrivals.unpark_all()

    def _record(self, message: str | bytes) -> None:
        now = trio.current_time()
        self.transcript.append((now, "received", message))
        try:
            obj = orjson.loads(message)
            kind = obj.get("kind")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind == "audioData":
            pcm = pybase64.b64decode(obj["audioData"]["data"], validate=True)
            self.received.append(Received(now, "audioData", pcm, message))
            self.playback.add(now, pcm)
        elif kind == "stopAudio":
            self.received.append(Received(now, "stopAudio", b"", message))
            self.playback.stop(now)
        else:
            self.received.append(Received(now, "other", b"", message))
        self._arrivals.unpark_all()


def _describe(predicate: Callable[..., Any]) -> str:
    """A predicate as its reader wrote it: a lambda's source, or a function's name."""
    name = getattr(predicate, "__name__", repr(predicate))
    if name != "<lambda>":
        return name
    try:
        source = inspect.getsource(predicate)
    except (OSError, TypeError):
        return "a condition"
    text = source[source.index("lambda") :].strip()
    depth = 0
    for i, char in enumerate(text):  # cut at the bracket that closes the lambda's call
        depth += char in "([{"
        depth -= char in ")]}"
        if depth < 0 or (depth == 0 and char == ","):
            return text[:i].strip()
    return text


@asynccontextmanager
async def simulated_call(
    url: str | None = None,
    *,
    stream: trio.abc.Stream | None = None,
    sample_rate: int = 16000,
    connection_id: str | None = None,
    correlation_id: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    send_metadata: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    resource: str = "/",
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109  # waits fail loudly by default
) -> AsyncIterator[SimulatedCall]:
    """Connect like ACS (to `url` + `resource`, or over an existing `stream`) and yield the call.

    `timeout`: the default of the call's waits, in seconds. On exit the call hangs up (close
    1000) if the gateway has not closed it already. A refused upgrade raises
    `trio_websocket.ConnectionRejected` (with `.status_code`); a refused TCP connection raises
    OSError. An exception from the `async with` body comes out as itself, not in a group."""
    failures = for_url(url) if stream is None else None
    alone: BaseException | None = None
    try:
        async with _connect(
            url,
            stream,
            sample_rate,
            connection_id,
            correlation_id,
            headers,
            send_metadata,
            ssl_context,
            resource,
            timeout,
            failures,
        ) as call:
            yield call
    except BaseExceptionGroup as group:
        # The peer's nursery wraps whatever crosses it: one failure is surfaced as itself.
        alone = _only_failure(group)
        if alone is None:
            raise
    if alone is not None:
        raise alone  # outside the handler, so that it keeps its own cause and context


def _only_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def _connect(
    url: str | None,
    stream: trio.abc.Stream | None,
    sample_rate: int,
    connection_id: str | None,
    correlation_id: str | None,
    headers: Sequence[tuple[str, str]],
    send_metadata: bool,
    ssl_context: ssl.SSLContext | None,
    resource: str,
    waits_s: float,
    failures: ProcessorFailures | None,
) -> AsyncIterator[SimulatedCall]:
    connection_id = connection_id or str(uuid.uuid4())
    correlation_id = correlation_id or str(uuid.uuid4())
    extra = [*acs_headers(connection_id, correlation_id), *headers]
    wire_headers = [(name.encode(), value.encode()) for name, value in extra]
    async with trio.open_nursery() as nursery:
        if stream is not None:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # typed for sockets; any trio Stream works
                "localhost",
                resource,
                extra_headers=wire_headers,
            )
        else:
            assert url is not None
            if resource != "/":
                url = url.rstrip("/") + resource
            ws = await trio_websocket.connect_websocket_url(
                nursery, url, extra_headers=wire_headers, ssl_context=ssl_context
            )
        call = SimulatedCall(ws, sample_rate, connection_id, extra, waits_s, failures)
        nursery.start_soon(call._receive)
        try:
            if send_metadata:
                await call.send_metadata()
            yield call
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                await ws.aclose()
            nursery.cancel_scope.cancel()
