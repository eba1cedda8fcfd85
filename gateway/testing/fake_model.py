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
time, so tests can assert on it (truncate offsets included). The wire under it (handshake,
frames, pings, reads stalled while silent) is `fake_model_wire`'s: the gateway's own
server-side WebSocket.

Never: real network beyond loopback, sleeps that drift (deltas are paced on absolute deadlines),
or anything that outlives `open_fake_model`.
"""

from __future__ import annotations

import functools
import itertools
import math
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import pybase64
import trio

from .fake_model_calls import FunctionCall, Reply, function_call_events
from .fake_model_wire import ConnectionClosed, ModelSocket, Reject, refusal_reason

RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000
VAD_WINDOW_MS = 20


@attrs.define
class Recorded:
    time: float
    connection: int
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


class FakeModel:
    """The server; create it with `open_fake_model(...)`. Attributes tests read:

    - `url`: ws://127.0.0.1:PORT (give it as the realtime processor's `endpoint`)
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
    ) -> None:
        self.noise_max_ms = noise_max_ms
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
        self._sessions: list[_Session] = []
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

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    # -- the server --

    async def _handle(self, stream: trio.SocketStream) -> None:
        socket = ModelSocket(stream, self)
        try:
            if not await socket.accept(self._refusal):
                return
            self.connections += 1
            self.live += 1
            session = _Session(self, self.connections, socket, socket.stream)
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
        self.requests.append((target, headers))
        if self.refuse_status is not None:
            return Reject(self.refuse_status, refusal_reason(self.refuse_status))
        if self.api_key is not None and self.api_key not in (
            headers.get("api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        ):
            return Reject(401, "invalid api key")
        return None


class _Session:
    """One client connection: its dialect, VAD state, and the response being streamed."""

    def __init__(
        self,
        model: FakeModel,
        number: int,
        ws: ModelSocket,
        stream: trio.abc.Stream,
    ) -> None:
        self.model = model
        self.number = number
        self.ws = ws
        self.stream = stream
        self.ga = True
        self.turn = 0  # user turns answered: the next reply is responses[turn]
        self.heard_ms = 0.0  # input audio received
        self.voiced_ms = 0.0
        self.unvoiced_ms = 0.0
        self.speaking = False
        self.auto_respond = True  # turn_detection.create_response: a reply at each turn's end
        self.speech_ms = 0.0  # voiced time in the current caller turn
        self.window = bytearray()
        self.responding: trio.CancelScope | None = None
        self.response_id: str | None = None
        self.nursery: trio.Nursery | None = None
        self.transcribe = False  # the client asked for transcripts of its audio
        self.turn_item: str | None = None  # the user item the caller's current speech makes

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self.model._new_id("event"))
        kind = event["type"]
        if not kind.endswith(".delta"):
            self.model.sent.append(Recorded(trio.current_time(), self.number, event))
            self.model._notify()
        try:
            await self.ws.send_message(orjson.dumps(event).decode())
        except ConnectionClosed:
            pass

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            session_id = self.model._new_id("sess")
            await self.send({"type": "session.created", "session": {"id": session_id}})
            if self.model.session_max_s is not None:
                nursery.start_soon(self.expire, self.model.session_max_s)
            try:
                while True:
                    message = await self.ws.get_message()
                    event = orjson.loads(message)
                    self.model.events.append(Recorded(trio.current_time(), self.number, event))
                    self.model._notify()
                    await self.on_event(event)
            except ConnectionClosed:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def on_event(self, event: dict[str, Any]) -> None:
        match event.get("type"):
            case "session.update":
                session = event.get("session", {})
                self.ga = "type" in session
                audio_in = session.get("audio", {}).get("input", {}) if self.ga else session
                key = "transcription" if self.ga else "input_audio_transcription"
                self.transcribe = bool(audio_in.get(key))
                vad = audio_in.get("turn_detection") or {}
                self.auto_respond = vad.get("create_response", True) is not False
                await self.send({"type": "session.updated", "session": session})
            case "conversation.item.create":
                await self.create_item(event.get("item"))
            case "input_audio_buffer.append":
                await self.on_audio(pybase64.b64decode(event["audio"], validate=True))
            case "response.create":
                if self.responding is not None:
                    await self.error("conversation_already_has_active_response", "responding")
                else:
                    self.start_reply(b"")
            case "response.cancel":
                if self.responding is None:
                    await self.error("response_cancel_not_active", "no active response")
                else:
                    self.responding.cancel()
            case "conversation.item.truncate":
                item_id = str(event.get("item_id"))
                sent = self.model.audio_sent_ms.get(item_id)
                end = event.get("audio_end_ms")
                if sent is None:
                    await self.error("item_not_found", f"no item {item_id}")
                elif not isinstance(end, int) or end > sent + 1:
                    await self.error("invalid_value", f"audio_end_ms {end} is past {sent} ms")
                else:
                    await self.send(
                        {
                            "type": "conversation.item.truncated",
                            "item_id": item_id,
                            "content_index": event.get("content_index", 0),
                            "audio_end_ms": end,
                        }
                    )
            case "conversation.item.delete":
                await self.send(
                    {"type": "conversation.item.deleted", "item_id": event.get("item_id")}
                )

    async def expire(self, after_s: float) -> None:
        """End the session at its maximum duration, as the service does."""
        await trio.sleep(after_s)
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": f"Your session hit the maximum duration of {after_s:g} seconds.",
                },
            }
        )
        with trio.move_on_after(1):
            await self.ws.aclose(1000, "session expired")

    async def create_item(self, item: Any) -> None:
        kinds = ("message", "function_call", "function_call_output")
        if not isinstance(item, dict) or item.get("type") not in kinds:
            await self.error("invalid_value", f"not an item: {item!r}")
            return
        if item["type"] == "message" and item.get("role") not in ("user", "assistant", "system"):
            await self.error("invalid_value", f"no role: {item!r}")
            return
        self.model.items.setdefault(self.number, []).append(item)
        created = {**item, "id": self.model._new_id("item")}
        kind = "conversation.item.added" if self.ga else "conversation.item.created"
        await self.send({"type": kind, "item": created})

    async def error(self, code: str, message: str) -> None:
        await self.send(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": code, "message": message},
            }
        )

    async def on_audio(self, pcm: bytes) -> None:
        """Server VAD by energy, in 20 ms windows of the appended audio."""
        self.window += pcm
        window_bytes = VAD_WINDOW_MS * BYTES_PER_MS
        while len(self.window) >= window_bytes:
            samples = array("h", bytes(self.window[:window_bytes]))[::4]  # energy: 6 kHz is plenty
            del self.window[:window_bytes]
            rms = math.sqrt(sum(s * s for s in samples) / len(samples))
            self.heard_ms += VAD_WINDOW_MS
            if rms >= self.model.vad_threshold:
                self.voiced_ms += VAD_WINDOW_MS
                self.unvoiced_ms = 0
                if self.speaking:
                    self.speech_ms += VAD_WINDOW_MS
                if not self.speaking and self.voiced_ms >= self.model.speech_start_ms:
                    self.speaking = True
                    self.speech_ms = self.voiced_ms
                    await self.speech_started()
            else:
                self.unvoiced_ms += VAD_WINDOW_MS
                self.voiced_ms = 0
                if self.speaking and self.unvoiced_ms >= self.model.silence_ms:
                    self.speaking = False
                    await self.speech_stopped()

    async def speech_started(self) -> None:
        item_id = self.turn_item = self.model._new_id("item")
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": int(self.heard_ms - self.voiced_ms),
                "item_id": item_id,
            }
        )
        if self.model.auto_cancel and self.responding is not None:
            self.responding.cancel()

    async def speech_stopped(self) -> None:
        item_id = self.turn_item or self.model._new_id("item")
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": int(self.heard_ms - self.unvoiced_ms),
                "item_id": item_id,
            }
        )
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id})
        model = self.model
        if self.transcribe:
            words = self.speech_ms >= model.noise_max_ms
            model.caller_turns += 1
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": f"caller turn {model.caller_turns}" if words else "",
                }
            )
        if self.auto_respond and self.responding is None:
            self.start_reply(None)

    def start_reply(self, otherwise: bytes | None) -> None:
        """Stream the next scripted reply (none left: `otherwise`, or no reply if None)."""
        model = self.model
        turn = model.turns if model.shared_script else self.turn
        if turn < len(model.responses):
            reply: Reply = model.responses[turn]
            text = model.texts[turn] if turn < len(model.texts) else f"reply {turn + 1}"
            self.turn += 1
            model.turns += 1
        elif otherwise is None:
            return
        else:
            reply, text = otherwise, ""
        assert self.nursery is not None
        self.responding = trio.CancelScope()
        self.nursery.start_soon(self.respond, reply, self.responding, text)

    async def call_functions(
        self, calls: tuple[FunctionCall, ...], call_id: str | None = None
    ) -> None:
        model = self.model
        response_id = model._new_id("resp")
        ids = [(c, model._new_id("item"), call_id or model._new_id("call")) for c in calls]
        for event in function_call_events(ids, response_id, self.ga):
            await self.send(event)

    async def respond(self, reply: Reply, scope: trio.CancelScope, text: str = "") -> None:
        model = self.model
        if not isinstance(reply, bytes):  # the model calls functions instead of speaking
            await self.call_functions(reply if isinstance(reply, tuple) else (reply,))
            self.responding = None
            model._notify()
            return
        response_id = model._new_id("resp")
        item_id = model._new_id("item")
        audio_delta = "response.output_audio.delta" if self.ga else "response.audio.delta"
        audio_done = "response.output_audio.done" if self.ga else "response.audio.done"
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"}
        where = {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
        }
        status = "completed"
        await self.send(
            {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}
        )
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {
                "type": "conversation.item.added" if self.ga else "conversation.item.created",
                "item": item,
            }
        )
        model.audio_sent_ms[item_id] = 0.0
        model.transcripts[item_id] = text
        with scope:
            step = model.delta_ms * BYTES_PER_MS
            deadline = trio.current_time()
            for start in range(0, len(reply), step):
                chunk = reply[start : start + step]
                await self.send(
                    {"type": audio_delta, **where, "delta": pybase64.b64encode_as_string(chunk)}
                )
                model.audio_sent_ms[item_id] += len(chunk) / BYTES_PER_MS
                deadline += model.delta_ms / 1000 / model.speed
                await trio.sleep_until(deadline)
            await self.send({"type": audio_done, **where})
        if scope.cancelled_caught:
            status = "cancelled"
            # the transcript runs ahead of the audio; what was generated was about this much
            text = text[
                : round(len(text) * model.audio_sent_ms[item_id] * BYTES_PER_MS / len(reply))
            ]
        await self.send(
            {
                "type": "response.output_audio_transcript.done"
                if self.ga
                else "response.audio_transcript.done",
                **where,
                "transcript": text,
            }
        )
        self.responding = None
        await self.send(
            {"type": "response.done", "response": {"id": response_id, "status": status}}
        )


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
) -> AsyncIterator[FakeModel]:
    """Run a fake realtime model on 127.0.0.1, port 0, until the block ends.

    `responses`: the replies, one per user turn or `response.create`, in order, the same script
    for every connection: 24 kHz PCM16 audio, or a `FunctionCall` (a tuple of them: one response
    calling all) (none left: no reply to a turn, an empty response to `response.create`); with
    `shared_script`, the turns of all connections count together, so a call that moves to a new
    session goes on with the script.
    `texts`: the words of each reply, for its transcript (default "reply N").
    `session_max_s`: every session expires this long after it opened.
    `noise_max_ms`: voiced sound shorter than this is noise: transcribed blank.
    `api_key`: if set, handshakes without it (`api-key` or `Authorization: Bearer`) get 401."""
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
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, model._handle, 0, host="127.0.0.1")
        )
        host, port = listeners[0].socket.getsockname()[:2]
        model.url = f"ws://{host}:{port}"
        try:
            yield model
        finally:
            nursery.cancel_scope.cancel()
