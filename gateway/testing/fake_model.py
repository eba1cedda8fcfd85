"""A fake realtime model server speaking the OpenAI Realtime protocol, for tests and benchmarks.

Owns: the model side of a Realtime WebSocket session on 127.0.0.1, port 0. It answers like the
real service: `session.created` on connect, `session.updated` for `session.update`; server VAD by
energy over the appended audio (`input_audio_buffer.speech_started` / `speech_stopped` /
`committed`); a scripted reply per user turn, streamed in `delta_ms` deltas `speed` times faster
than real time (`response.created`, `response.output_item.added`, audio deltas,
`response.output_audio.done`, `response.done`), or a scripted function call (`FunctionCall`:
the tool's output comes back as a `function_call_output` item); `response.create` answered with
the next scripted reply (a greeting, the turn after a tool's output; rejected while a response
is in flight, as the service does); `response.cancel`, `conversation.item.truncate`
(rejected past the audio sent, as the service does) and `conversation.item.delete`. It speaks
the GA names, or the beta ones (`response.audio.delta`, ...) when the client's `session.update`
is in the beta shape. Transcripts: of each reply (`response.output_audio_transcript.done`, the
reply's text, cut to the audio streamed if it was cancelled), and of each caller turn
(`conversation.item.input_audio_transcription.completed`, "caller turn N") when the session asked
for input transcription: blank for a burst of sound shorter than `noise_max_ms` (a cough, a
click: speech_started, but no words). With `turn_detection.create_response = false` it replies
only to `response.create`. `conversation.item.create` (user and assistant messages, function
outputs) is acknowledged and recorded per session (`items`). Sessions expire `session_max_s`
after they open, as the service's do: an `error` event with code `session_expired`, then the
close. On demand it refuses handshakes, drops connections, sends error events, or goes silent
(stops reading, so pings go unanswered). Everything it receives is recorded (`events`) with the
time, so tests can assert on it (truncate offsets included). Each connection's side of the
protocol is a `fake_model_session.Session`; the wire under it (handshake, frames, pings, reads
stalled while silent) is `fake_model_wire`'s: the gateway's own server-side WebSocket.

Never: listening beyond loopback unless told to (`host`), sleeps that drift (deltas are paced
on absolute deadlines), or anything that outlives `open_fake_model`.

With `echo` it is a different model: every appended chunk comes straight back as the model's
audio (`fake_model_echo`), for checking and loading a bridged call's audio path.
"""

from __future__ import annotations

import functools
import itertools
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from socket import SO_RCVBUF, SOL_SOCKET
from typing import Any, Final

import trio

from .fake_model_calls import FunctionCall, Reply
from .fake_model_echo import EchoSession
from .fake_model_session import Recorded, Session
from .fake_model_wire import ModelSocket, Reject, refusal_reason

# Without `record`: the replies whose audio count and text are kept (a truncate names a recent one)
REPLIES_KEPT: Final = 1000


class FakeModel:
    """The server; create it with `open_fake_model(...)`. Attributes tests read:

    - `url`: ws://127.0.0.1:PORT, or wss:// when it serves TLS (give it as the realtime
      processor's `endpoint`)
    - `events`: every client event received, `Recorded(time, connection, event)`
    - `sent`: every server event sent except audio deltas (`Recorded` too)
    - `requests`: (resource, headers) of each handshake; `connections` opened, `live` now open
    - `audio_sent_ms`: per item id, ms of audio streamed
    - `tool_outputs()`: the function call outputs received; `tools_offered()`: the tools the
      last `session.update` declared
    - `items`: per connection, the items the client created (`conversation.item.create`)
    - `transcripts`: per reply item id, its full text
    """

    def __init__(
        self,
        responses: Sequence[Reply],
        *,
        api_key: str | None,
        speed: float,
        delta_ms: int,
        vad_threshold: float,
        speech_start_ms: int,
        silence_ms: int,
        auto_cancel: bool,
        texts: Sequence[str] = (),
        shared_script: bool = False,
        session_max_s: float | None = None,
        noise_max_ms: int = 250,
        ssl_context: ssl.SSLContext | None = None,
        receive_buffer: int | None = None,
        echo: bool = False,
        echo_burst_ms: int = 0,
        record: bool = True,
        repeat: bool = False,
        rate_scripts: Mapping[int, Sequence[Reply]] | None = None,
    ) -> None:
        self.repeat = repeat
        self.rate_scripts = dict(rate_scripts or {})
        # False: nothing received or sent is kept (`events`, `sent`, `requests`, `items`), for
        # a model that serves a load test for hours
        self.record = record
        self.receive_buffer = receive_buffer  # None: the kernel's own, which grows
        self.session_type = EchoSession if echo else Session
        self.echo_burst_ms = echo_burst_ms
        self.noise_max_ms = noise_max_ms
        self.ssl_context = ssl_context  # None: plain ws://
        self.responses = list(responses)
        self.api_key = api_key
        self.speed = speed
        self.delta_ms = delta_ms
        self.vad_threshold = vad_threshold
        self.speech_start_ms = speech_start_ms
        self.silence_ms = silence_ms
        self.auto_cancel = auto_cancel
        self.texts = list(texts)
        self.shared_script = shared_script
        self.session_max_s = session_max_s
        self.turns = 0  # user turns answered on all connections (`shared_script`)
        self.caller_turns = 0  # caller turns transcribed, on all connections
        self.items: dict[int, list[dict[str, Any]]] = {}
        self.transcripts: dict[str, str] = {}
        self.url = ""
        self.events: list[Recorded] = []
        self.sent: list[Recorded] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.audio_sent_ms: dict[str, float] = {}
        self.connections = 0
        self.live = 0
        self.refuse_status: int | None = None
        self.silent = False
        self._unstalled = trio.lowlevel.ParkingLot()
        self._changed = trio.lowlevel.ParkingLot()
        self._sessions: list[Session] = []
        self._ids = itertools.count(1)

    # -- what tests use --

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [r.event for r in self.events if r.type == kind]

    def sent_of(self, kind: str) -> list[Recorded]:
        return [r for r in self.sent if r.type == kind]

    def tool_outputs(self) -> list[dict[str, Any]]:
        """Each `function_call_output` item received: its `call_id` and `output` (a string)."""
        items = [e.get("item", {}) for e in self.received("conversation.item.create")]
        return [i for i in items if i.get("type") == "function_call_output"]

    def tools_offered(self) -> list[dict[str, Any]]:
        """The `tools` of the last `session.update` (none: [])."""
        updates = self.received("session.update")
        return list(updates[-1].get("session", {}).get("tools", [])) if updates else []

    async def wait_for(
        self,
        predicate: Callable[[FakeModel], Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109  # waits fail loudly by default
        what: str = "a condition",
    ) -> None:
        """Wait until `predicate(self)` is true; `AssertionError` after `timeout` seconds."""
        with trio.move_on_after(timeout):
            while not predicate(self):
                await self._changed.park()
            return
        got = [r.type for r in self.events][-10:]
        raise AssertionError(
            f"the fake model waited {timeout:g} s for {what}; the last events it received: {got}"
        )

    def refuse(self, status: int | None = 503) -> None:
        """Refuse every later handshake with HTTP `status` (None: accept again)."""
        self.refuse_status = status

    async def drop(self) -> None:
        """Drop every open connection abruptly (TCP closed, no closing handshake)."""
        for session in list(self._sessions):
            await trio.aclose_forcefully(session.stream)

    async def send_error(self, code: str, type: str = "server_error", message: str = "") -> None:
        for session in list(self._sessions):
            await session.send(
                {"type": "error", "error": {"type": type, "code": code, "message": message}}
            )

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Call the client's function tool `name`, as the model does: in a response of its
        own, so after the response under way, if one is (the service has one at a time; while
        the call is made, a `response.create` is refused as it would be). The call id."""
        call_id = self._new_id("call")
        for session in list(self._sessions):
            while session.responding is not None:
                await self._changed.park()
            session.responding = trio.CancelScope()
            try:
                await session.call_functions((FunctionCall(name, arguments or {}),), call_id)
            finally:
                session.responding = None
                self._notify()
        return call_id

    def go_silent(self, silent: bool = True) -> None:
        """Stop (or resume) reading and answering: pings go unanswered."""
        self.silent = silent
        if not silent:
            self._unstalled.unpark_all()

    def _notify(self) -> None:
        self._changed.unpark_all()

    def new_reply(self, item_id: str, text: str) -> None:
        """Start counting a reply's audio (a truncate is checked against it) and keep its
        text; without `record`, only the latest `REPLIES_KEPT` replies are kept."""
        self.audio_sent_ms[item_id] = 0.0
        self.transcripts[item_id] = text
        if not self.record and len(self.audio_sent_ms) > REPLIES_KEPT:
            del self.audio_sent_ms[next(iter(self.audio_sent_ms))]
            del self.transcripts[next(iter(self.transcripts))]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    # -- the server --

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.receive_buffer is not None:
            stream.socket.setsockopt(SOL_SOCKET, SO_RCVBUF, self.receive_buffer)
        socket = ModelSocket(stream, self, self.ssl_context)
        try:
            if not await socket.accept(self._refusal):
                return
            self.connections += 1
            self.live += 1
            session = self.session_type(self, self.connections, socket, socket.stream)
            self._sessions.append(session)
            self._notify()
            try:
                await session.run()
            finally:
                self._sessions.remove(session)
                self.live -= 1
                self._notify()
        finally:
            await socket.abort()

    def _refusal(self, target: str, headers: dict[str, str]) -> Reject | None:
        """Record the handshake; how to refuse it (None: accept)."""
        if self.record:
            self.requests.append((target, headers))
        if self.refuse_status is not None:
            return Reject(self.refuse_status, refusal_reason(self.refuse_status))
        if self.api_key is not None and self.api_key not in (
            headers.get("api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        ):
            return Reject(401, "invalid api key")
        return None


@asynccontextmanager
async def open_fake_model(
    responses: Sequence[Reply] = (),
    *,
    api_key: str | None = None,
    speed: float = 4.0,
    delta_ms: int = 100,
    vad_threshold: float = 300.0,
    speech_start_ms: int = 60,
    silence_ms: int = 500,
    auto_cancel: bool = False,
    texts: Sequence[str] = (),
    shared_script: bool = False,
    session_max_s: float | None = None,
    noise_max_ms: int = 250,
    ssl_context: ssl.SSLContext | None = None,
    receive_buffer: int | None = None,
    echo: bool = False,
    echo_burst_ms: int = 0,
    record: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    repeat: bool = False,
    rate_scripts: Mapping[int, Sequence[Reply]] | None = None,
) -> AsyncIterator[FakeModel]:
    """Run a fake realtime model on 127.0.0.1, port 0 (or `host`, `port`), until the block ends.

    `responses`: the replies, one per user turn or `response.create`, in order, the same script
    for every connection: 24 kHz PCM16 audio, or a `FunctionCall` (a tuple of them: one response
    calling all) (none left: no reply to a turn, an empty response to `response.create`); with
    `shared_script`, the turns of all connections count together, so a call that moves to a new
    session goes on with the script.
    `texts`: the words of each reply, for its transcript (default "reply N").
    `session_max_s`: every session expires this long after it opened.
    `noise_max_ms`: voiced sound shorter than this is noise: transcribed blank.
    `api_key`: if set, handshakes without it (`api-key` or `Authorization: Bearer`) get 401.
    `ssl_context`: a server-side context: serve TLS (`wss://`), as the real service does, so a
    benchmark's bridged calls pay for TLS as in production (a test's client trusts the context's
    certificate through its own CA).
    `receive_buffer`: the kernel receive buffer (`SO_RCVBUF`) of each connection it accepts.
    By default the kernel's own, which grows to megabytes as the model reads, so a test of a
    model that stops reading sets it: then how much the kernel holds does not depend on how
    fast the model read before.
    `echo`: instead of the VAD, the script and the transcripts (sessions still expire at
    `session_max_s`), answer every `input_audio_buffer.append` at once with its own audio, as
    the deltas of one long response (`fake_model_echo`): a bridged call then carries audio
    both ways at the caller's rate, and where nothing is resampled hears exactly what it said.
    `echo_burst_ms`: hold those answers until that much audio (in the gateway's 40 ms appends)
    waits, then send them at once, as a real model streams a reply faster than real time.
    `record`: keep what it received and sent, for tests to read (False: keep nothing, for a
    long load test: `acs-media-gateway fake-model`).
    `repeat`: once the script is over, start it again (each connection's, or the shared one).
    `rate_scripts`: the script for sessions whose output audio is at that rate (a key), instead
    of `responses`: for a model that serves both 24 kHz and Voice Live's 16 kHz sessions."""
    model = FakeModel(
        responses,
        api_key=api_key,
        speed=speed,
        delta_ms=delta_ms,
        vad_threshold=vad_threshold,
        speech_start_ms=speech_start_ms,
        silence_ms=silence_ms,
        auto_cancel=auto_cancel,
        texts=texts,
        shared_script=shared_script,
        session_max_s=session_max_s,
        noise_max_ms=noise_max_ms,
        ssl_context=ssl_context,
        receive_buffer=receive_buffer,
        echo=echo,
        echo_burst_ms=echo_burst_ms,
        record=record,
        repeat=repeat,
        rate_scripts=rate_scripts,
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, model._handle, port, host=host)
        )
        bound, port = listeners[0].socket.getsockname()[:2]
        where = f"[{bound}]:{port}" if ":" in bound else f"{bound}:{port}"
        model.url = f"{'ws' if ssl_context is None else 'wss'}://{where}"
        try:
            yield model
        finally:
            nursery.cancel_scope.cancel()
