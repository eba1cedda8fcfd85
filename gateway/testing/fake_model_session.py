"""One connection to the fake realtime model (`gateway.testing.fake_model`): the model's side of
the Realtime protocol for that session.

Owns: the session's dialect (GA or beta event names), its server VAD by energy over the
appended audio, its turns, the response it is streaming (one at a time, as the service), and
the events it sends, recorded on the model (`FakeModel.sent`) for tests to assert on. Never:
the listening socket, the script or the scenario controls (refusals, drops, silence): those are
the `FakeModel`'s, which every session reads through `self.model`.
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import pybase64
import trio

from .fake_model_calls import FunctionCall, Reply, function_call_events
from .fake_model_wire import ConnectionClosed, ModelSocket

if TYPE_CHECKING:
    from .fake_model import FakeModel

RATE = 24000
VAD_WINDOW_MS = 20


@attrs.define
class Recorded:
    time: float
    connection: int
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


class Session:
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
        # PCM16 in and out, as the last session.update set them (24 kHz unless it said else)
        self.rate_in = self.rate_out = RATE

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self.model._new_id("event"))
        kind = event["type"]
        if not kind.endswith(".delta") and self.model.record:
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
                    await self.receive(orjson.loads(await self.ws.get_message()))
            except ConnectionClosed:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def receive(self, event: dict[str, Any]) -> None:
        """One client event: recorded, then answered."""
        if self.model.record:
            self.model.events.append(Recorded(trio.current_time(), self.number, event))
            self.model._notify()
        await self.on_event(event)

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
                now = (self.rate_in, self.rate_out)
                self.rate_in, self.rate_out = _rates(session, self.ga, now)
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
        if self.model.record:
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
        window_bytes = VAD_WINDOW_MS * self.rate_in * 2 // 1000
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
        script = model.rate_scripts.get(self.rate_out, model.responses)
        turn = model.turns if model.shared_script else self.turn
        if model.repeat and script:
            turn %= len(script)
        if turn < len(script):
            reply: Reply = script[turn]
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
        model.new_reply(item_id, text)
        bytes_per_ms = self.rate_out * 2 // 1000
        with scope:
            step = model.delta_ms * bytes_per_ms
            deadline = trio.current_time()
            for start in range(0, len(reply), step):
                chunk = reply[start : start + step]
                await self.send(
                    {"type": audio_delta, **where, "delta": pybase64.b64encode_as_string(chunk)}
                )
                model.audio_sent_ms[item_id] += len(chunk) / bytes_per_ms
                deadline += model.delta_ms / 1000 / model.speed
                await trio.sleep_until(deadline)
            await self.send({"type": audio_done, **where})
        if scope.cancelled_caught:
            status = "cancelled"
            # the transcript runs ahead of the audio; what was generated was about this much
            text = text[
                : round(len(text) * model.audio_sent_ms[item_id] * bytes_per_ms / len(reply))
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


def _rates(session: dict[str, Any], ga: bool, now: tuple[int, int]) -> tuple[int, int]:
    """The input and output sample rates after a session.update (a partial update: what it
    leaves out stays `now`): GA's `format.rate`, or Voice Live's `input_audio_sampling_rate`
    and `output_audio_format` (`"pcm16"` is 24 kHz, `"pcm16_16000hz"` 16 kHz)."""
    if ga:
        audio = session.get("audio", {})
        rate_in, rate_out = (
            int(audio.get(side, {}).get("format", {}).get("rate", default))
            for side, default in zip(("input", "output"), now, strict=True)
        )
        return rate_in, rate_out
    rate_out = now[1]
    out = session.get("output_audio_format")
    if out == "pcm16":
        rate_out = RATE
    elif isinstance(out, str) and out.startswith("pcm16_"):
        rate_out = int(out.removeprefix("pcm16_").removesuffix("hz"))
    return int(session.get("input_audio_sampling_rate", now[0])), rate_out
