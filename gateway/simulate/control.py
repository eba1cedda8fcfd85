"""simulate's control-plane mode: whole calls through the fake ACS, against a gateway that
answers them. Each call rings (IncomingCall through Event Grid), is answered, streams media,
and ends one of three ways: the caller hangs up, the bot hangs up, or the bot transfers it.

Owns: the mode's options (`ControlOptions`), the fake ACS (`gateway.testing.open_fake_acs`) and,
without `gateway`, an answering gateway in this process running `control_bot`; driving each
call and what it measured (`ControlCall`: answer and media-connect latency, how it ended, its
media as a `CallResult`). Never: formatting or deciding failure (`control_report`), the
media-only engine (`runner`).

Latencies are the fake's clock: answer = IncomingCall posted -> the gateway's answer request
received; media connect = answer received -> the media WebSocket open. With the gateway in
this process the fake and the gateway share one core: `--gateway URL` keeps them apart.

The bot ends a call when the caller presses `#` (hang up) or `*` (transfer); a gateway under
`--gateway` must run `gateway.simulate.control_bot:make` for those ends.
"""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

from ..acs import client
from ..acs.packets import FRAME_MS
from ..testing.audio import speech
from ..testing.fake_acs import FakeAcs, FakeCall, open_fake_acs
from ..testing.peer import SimulatedCall, WaitFailed
from . import control_bot
from .report import CallResult, Histogram, SimulatorHealth

ENDS: Final = ("caller", "bot", "transfer")
FAULTS: Final = ("refuse-answer", "fail-streaming", "drop-callbacks")
ECHO_WAIT: Final = 2.0  # seconds an echo may lag behind the end of the caller's speech
SECRET_ENV: Final = "ACS_GATEWAY_EVENTGRID_SECRET"
CONNECTION_STRING_ENV: Final = "ACS_CONNECTION_STRING"


@attrs.frozen
class ControlOptions:
    calls: int = 1
    duration: float = 2.0  # seconds of the caller's speech per call
    ramp: float = 0.0  # seconds over which calls ring, evenly
    sample_rate: int = 16000
    end: str = "mix"  # one of ENDS, or "mix": caller, bot, transfer in turn
    expect: str = "auto"  # "echo": the caller's audio must come back byte for byte
    gateway: str | None = None  # a running gateway's public https:// URL
    ca_file: str | None = None  # what the fake trusts calling that gateway
    insecure: bool = False
    acs_ca: str | None = None  # where to write the fake's CA (the gateway's REQUESTS_CA_BUNDLE)
    fault: str | None = None  # one of FAULTS: the fake misbehaves so
    timeout: float = 10.0  # seconds for each step of a call (answer, media, the end)

    def __attrs_post_init__(self) -> None:
        if self.end not in (*ENDS, "mix"):
            raise ValueError(f"--end must be one of {', '.join(ENDS)} or mix, not {self.end!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"--acs-fault must be one of {', '.join(FAULTS)}")
        if self.gateway is not None and urlsplit(self.gateway).scheme != "https":
            raise ValueError(f"--gateway must be the gateway's https:// public_url: {self.gateway}")

    def end_of(self, index: int) -> str:
        return ENDS[index % len(ENDS)] if self.end == "mix" else self.end


@attrs.define
class ControlCall:
    """One call of the run: what the control plane did, and its media as a `CallResult`."""

    index: int
    wanted: str  # the end the scenario asked for
    result: CallResult
    answer_s: float | None = None  # IncomingCall posted -> answer request at the fake
    media_s: float | None = None  # answer -> media WebSocket open
    ended: str | None = None  # the end seen: caller, bot, transfer (None: it failed first)
    lateness: list[float] = attrs.Factory(list)  # each frame of the speech: sent - due

    @property
    def answered(self) -> bool:
        return self.answer_s is not None

    @property
    def streaming(self) -> bool:
        return self.media_s is not None

    def fail(self, fault: str) -> None:
        self.result.ended(fault)


@attrs.define
class ControlRun:
    calls: list[ControlCall]
    answer_refusals: dict[int, int]  # answer requests the fake refused, by status
    settings: dict[str, Any]
    health: SimulatorHealth  # this process's CPU: the fake's, and the gateway's if it runs here
    # the gateway's own share of the answer (event read -> request handed to the SDK), when
    # it runs in this process
    gateway_answer: Histogram | None = None


async def run(options: ControlOptions, environ: Mapping[str, str] | None = None) -> ControlRun:
    """Ring `options.calls` calls and follow each to its end."""
    environ = os.environ if environ is None else environ
    pcm = _speech(options.sample_rate, options.duration)
    calls = [ControlCall(i, options.end_of(i), CallResult(i, "")) for i in range(options.calls)]
    cpu, wall = _cpu_seconds(), trio.current_time()
    own = Histogram() if options.gateway is None else None
    async with _fake_acs(options, environ, own) as acs:
        if options.fault == "refuse-answer":
            acs.answer_status = 500
        acs.fail_streaming = options.fault == "fail-streaming"
        acs.drop_callbacks = options.fault == "drop-callbacks"
        async with trio.open_nursery() as nursery:
            for record in calls:
                nursery.start_soon(_call, acs, options, record, pcm)
                await trio.sleep(options.ramp / max(1, options.calls))
        refusals: dict[int, int] = {}
        for request in acs.requests:
            if request.target.startswith("/calling/callConnections:answer") and (
                request.status != 200
            ):
                refusals[request.status] = refusals.get(request.status, 0) + 1
    health = SimulatorHealth([_cpu_seconds() - cpu], [trio.current_time() - wall])
    for record in calls:
        for late in record.lateness:
            health.send_lateness.add(late)
    settings = {k: v for k, v in attrs.asdict(options).items() if k not in ("acs_ca",)}
    return ControlRun(calls, refusals, {"mode": "control", **settings}, health, own)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@asynccontextmanager
async def _fake_acs(
    options: ControlOptions, environ: Mapping[str, str], own: Histogram | None
) -> AsyncIterator[FakeAcs]:
    """The fake ACS, subscribed to the gateway (started here without `options.gateway`, its
    own answer latencies then going to `own`)."""
    if options.gateway is None:
        from ..testing.answering import open_answering_gateway

        bot = control_bot.make({})
        async with open_answering_gateway(
            processors={"control_bot": bot}, processor="control_bot"
        ) as gw:
            if own is not None and gw.control.answering is not None:
                gw.control.answering.answer_latency = own.add  # the hook /metrics uses
            yield gw.acs
        return
    secret = environ.get(SECRET_ENV)
    endpoint, key = _connection_string(environ.get(CONNECTION_STRING_ENV, ""))
    if not secret:
        raise ValueError(f"--gateway: ${SECRET_ENV} must hold the gateway's Event Grid secret")
    port = urlsplit(endpoint).port
    if urlsplit(endpoint).hostname not in ("127.0.0.1", "localhost") or port is None:
        raise ValueError(f"--gateway: ${CONNECTION_STRING_ENV} must name https://127.0.0.1:PORT")
    trust = ssl.create_default_context(cafile=options.ca_file)
    if options.insecure:
        trust.check_hostname, trust.verify_mode = False, ssl.CERT_NONE
    async with open_fake_acs(client_ssl=trust, port=port, access_key=key) as acs:
        if options.acs_ca is not None:
            shutil.copyfile(acs.ca_path, options.acs_ca)
        await acs.subscribe(f"{options.gateway.rstrip('/')}/eventgrid?secret={secret}")
        yield acs


def _connection_string(text: str) -> tuple[str, str]:
    fields = dict(part.partition("=")[::2] for part in text.split(";") if part)
    if not fields.get("endpoint") or not fields.get("accesskey"):
        raise ValueError(
            f"--gateway: ${CONNECTION_STRING_ENV} must be the gateway's "
            "'endpoint=https://127.0.0.1:PORT/;accesskey=KEY' (the fake ACS serves there)"
        )
    return fields["endpoint"], fields["accesskey"]


def _speech(rate: int, seconds: float) -> bytes:
    clip = speech(rate)
    size = int(rate * seconds) * 2 // 640 * 640 or 640
    return (clip * (size // len(clip) + 1))[:size]


async def _call(acs: FakeAcs, options: ControlOptions, record: ControlCall, pcm: bytes) -> None:
    """One whole call; a fault ends it (`ControlCall.fail`) and is never raised."""
    call = await acs.ring(caller=f"+1425555{record.index % 10000:04d}")
    record.result.connection_id = call.call_connection_id
    try:
        await _follow(acs, options, record, call, pcm)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(options.timeout):
            await acs.hang_up(call)  # a no-op for a call already over


async def _follow(
    acs: FakeAcs, options: ControlOptions, record: ControlCall, call: FakeCall, pcm: bytes
) -> None:
    delivery = call.delivery
    if delivery is None or delivery.status != 200:
        status = "unreachable" if delivery is None or delivery.status is None else delivery.status
        record.fail(f"eventgrid_{status}")
        return
    with trio.move_on_after(options.timeout):
        await call.answered.wait()
    if call.answered_at is None or call.rung_at is None:
        record.fail("not_answered")
        return
    record.answer_s = call.answered_at - call.rung_at
    with trio.move_on_after(options.timeout):
        await _media_or_failure(call)
    if not call.media_connected.is_set():
        failed = "MediaStreamingFailed" in call.callback_kinds()
        record.fail("streaming_failed" if failed else "media_timeout")
        return
    assert call.media is not None and call.media_connected_at is not None
    record.media_s = call.media_connected_at - call.answered_at
    record.result.connected = True
    media = call.media
    began, first = trio.current_time(), len(media.transcript)
    try:
        await media.stream(pcm)
        if options.expect != "bot":
            with trio.move_on_after(ECHO_WAIT):
                await media.wait_for(lambda m: len(m.received_pcm) >= len(pcm))
        record.lateness = _account(record.result, pcm, media, first)
        times = media.audio_times
        if times:
            record.result.first_audio_ms = round((times[0] - began) * 1000, 2)
        await _end(acs, options, record, call)
        with trio.move_on_after(options.timeout):
            await media.closed.wait()
        record.result.close_code = media.close_code or 1000  # ACS closes without waiting
        record.result.closed_at = round(trio.current_time() - began, 3)
    except (WaitFailed, trio_websocket.ConnectionClosed):
        record.fail("media_lost")


async def _media_or_failure(call: FakeCall) -> None:
    """Until the media WebSocket opens, or ACS posts MediaStreamingFailed."""
    async with trio.open_nursery() as race:

        async def failed() -> None:
            await call.wait_for_callback("MediaStreamingFailed")
            race.cancel_scope.cancel()

        async def connected() -> None:
            await call.media_connected.wait()
            race.cancel_scope.cancel()

        race.start_soon(failed)
        race.start_soon(connected)


def _account(result: CallResult, sent: bytes, media: SimulatedCall, first: int) -> list[float]:
    """Echo accounting by frame position (what came back equal, what came back different),
    each echoed frame's round trip when the gateway sends one message a frame (an echo does),
    and the gateway's messages by form. `first`: the transcript's length before the speech.
    Returns how late each frame left against its 20 ms deadline (the simulator's health)."""
    frame = media.frame_bytes
    result.frames_sent = len(sent) // frame
    result.echo_expected = result.frames_sent
    sent_at = [t for t, way, _ in media.transcript[first:] if way == "sent"]
    audio = [r for r in media.received if r.kind == "audioData"]
    received = b"".join(r.pcm for r in audio)
    result.frames_received = len(audio)
    result.audio_ms_received = len(received) / (frame * 50) * 1000
    timed = all(len(r.pcm) == frame for r in audio)
    for k in range(min(len(sent), len(received)) // frame):
        if sent[k * frame : (k + 1) * frame] == received[k * frame : (k + 1) * frame]:
            result.echoed += 1
            if timed and k < len(sent_at):
                result.rtt.add(audio[k].time - sent_at[k])
        else:
            result.mismatched += 1
    for message in media.received:
        form = client.classify_form(message.raw)[2]
        result.forms[form] = result.forms.get(form, 0) + 1
    return [t - (sent_at[0] + k * FRAME_MS / 1000) for k, t in enumerate(sent_at)]


async def _end(acs: FakeAcs, options: ControlOptions, record: ControlCall, call: FakeCall) -> None:
    assert call.media is not None
    if record.wanted == "caller":
        await acs.hang_up(call)
    else:
        await call.media.send_dtmf(
            control_bot.HANG_UP if record.wanted == "bot" else control_bot.TRANSFER
        )
    with trio.move_on_after(options.timeout):
        await call.disconnected.wait()
    if not call.disconnected.is_set():
        record.fail(f"no_{record.wanted}_end")
        return
    record.ended = (
        "transfer" if call.transfers else ("caller" if record.wanted == "caller" else "bot")
    )
    if record.ended != record.wanted:
        record.fail(f"no_{record.wanted}_end")
        return
    record.result.ended("bot_hung_up" if record.ended == "bot" else "completed")
