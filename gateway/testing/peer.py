"""A simulated ACS peer: connects like ACS Call Automation and plays what the gateway sends.

Owns: the ACS side of a media-streaming WebSocket, for tests and load tools. It sends the
handshake headers ACS sends, `AudioMetadata`, then audio at real-time cadence in 20 ms frames
(absolute deadlines from `trio.current_time()`, so it runs on Trio's autojump clock too), for
one mixed stream or several unmixed participants. It records everything the gateway sends back
and models ACS's playback queue: audio plays at real-time rate from a queue, and stop-audio drops
whatever has not been played yet (`AcsPlayback`).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import pybase64
import trio
import trio_websocket

from ..acs.client import acs_headers, audio_text, dtmf_text, metadata_text
from ..acs.packets import BYTES_PER_SAMPLE, FRAME_MS, frame_bytes
from ..audio.samples import frames as split_frames


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
    ) -> None:
        self.ws = ws
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
    def audio_times(self) -> list[float]:
        """When each audio message arrived (trio time)."""
        return [r.time for r in self.received if r.kind == "audioData"]

    @property
    def first_audio_latency(self) -> float | None:
        """Seconds from the call's start to the first audio the gateway sent (None: none yet)."""
        times = self.audio_times
        return times[0] - self.started if times else None

    async def wait_for_audio(self, n_bytes: int) -> None:
        """Wait until the gateway has sent at least `n_bytes` of audio (or the socket closes)."""
        while len(self.received_pcm) < n_bytes and not self.closed.is_set():
            await self._arrivals.park()

    async def wait_for(self, predicate: Any) -> None:
        """Wait until `predicate(self)` is true or the socket closes."""
        while not predicate(self) and not self.closed.is_set():
            await self._arrivals.park()

    # -- what ACS sends --

    async def send_raw(self, message: str | bytes) -> None:
        self.transcript.append((trio.current_time(), "sent", message))
        await self.ws.send_message(message)

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
) -> AsyncIterator[SimulatedCall]:
    """Connect like ACS (to `url` + `resource`, or over an existing `stream`) and yield the call.

    On exit the call hangs up (close 1000) if the gateway has not closed it already. A refused
    upgrade raises `trio_websocket.ConnectionRejected` (with `.status_code`); a refused TCP
    connection raises OSError."""
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
        ) as call:
            yield call
    except BaseExceptionGroup as group:
        # Surface a refused or failed connection as itself, not wrapped in the peer's group.
        refused, rest = group.split((trio_websocket.HandshakeError, OSError))
        if refused is None or rest is not None:
            raise
        leaf: BaseException = refused
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


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
        call = SimulatedCall(ws, sample_rate, connection_id, extra)
        nursery.start_soon(call._receive)
        try:
            if send_metadata:
                await call.send_metadata()
            yield call
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                await ws.aclose()
            nursery.cancel_scope.cancel()
