"""simulate's control-plane mode: whole calls through the fake ACS, against a gateway that
answers them. Each call rings (IncomingCall through Event Grid), is answered, streams media,
and ends one of three ways: the caller hangs up, the bot hangs up, or the bot transfers it.

Owns: the mode's options (`ControlOptions`), the fake ACS (`gateway.testing.open_fake_acs`) and,
without `gateway`, an answering gateway in this process running `control_bot`; ringing the
calls on the ramp, and the records of what each measured (`ControlCall`: answer and
media-connect latency, how it ended, its media as a `CallResult`). Never: one call's steps
(`control_call`), formatting or deciding failure (`control_report`), the media-only engine
(`runner`).

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

from ..acs.packets import SUPPORTED_SAMPLE_RATES
from ..testing.audio import speech
from ..testing.fake_acs import FakeAcs, open_fake_acs
from . import control_bot
from .results import CallResult, Histogram, SimulatorHealth

ENDS: Final = ("caller", "bot", "transfer")
FAULTS: Final = ("refuse-answer", "fail-streaming", "drop-callbacks")
SECRET_ENV: Final = "ACS_GATEWAY_EVENTGRID_SECRET"
CONNECTION_STRING_ENV: Final = "ACS_CONNECTION_STRING"


@attrs.frozen
class ControlOptions:
    calls: int = 1
    duration: float = 2.0  # seconds of the caller's speech per call
    ramp: float = 0.0  # seconds over which calls ring, evenly
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
    from .control_call import call_through  # it reads this module's records

    environ = os.environ if environ is None else environ
    # The gateway's answer sets the stream's rate (its route's audio format): speech for both
    pcm = {rate: _speech(rate, options.duration) for rate in SUPPORTED_SAMPLE_RATES}
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
                nursery.start_soon(call_through, acs, options, record, pcm)
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
