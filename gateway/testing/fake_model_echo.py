"""The fake realtime model's echo mode (`open_fake_model(echo=True)`): each connection answers
every appended chunk of the caller's audio with the same audio, as the model's.

Owns: one echoing session per connection: `session.created`, `session.updated` (the session's
dialect and rates, as `fake_model_session.Session` keeps them), and one long response whose
audio deltas are the appended chunks, base64 untouched. So a bridged call carries audio both
ways at the caller's own rate, as an echo call does: where nothing is resampled the caller hears
exactly what it said, which makes the bridge's whole audio path checkable end to end (and
loadable: benchmarks and soaks of many bridged calls use it). With `echo_burst_ms` the answers
are held until that much audio waits and then sent at once, each chunk its own delta, as a
real model streams a reply faster than real time.

Never: VAD, turns, scripted replies, transcripts, or recording the appended audio (a long run
of hundreds of calls would keep it all): the events other than appends go to the scripted
session's handling, and are recorded as there; like it, a session expires `session_max_s`
after it opened, if that is set. It echoes what it gets at the rate it gets it, so a session
must ask for the same rate both ways (the gateway always does).
"""

from __future__ import annotations

from typing import Any

from .fake_model_session import Session

# the caller's audio per append, as the gateway batches it by default: a burst's count
APPEND_MS = 40


class EchoSession(Session):
    """A session that streams the caller's audio back as the model's answer."""

    response: dict[str, Any] | None = None
    held: list[str] | None = None

    async def receive(self, event: dict[str, Any]) -> None:
        if event.get("type") == "input_audio_buffer.append":  # answered, not recorded
            await self.echo(event["audio"], max(1, self.model.echo_burst_ms // APPEND_MS))
        else:
            await super().receive(event)

    async def echo(self, audio: str, burst: int) -> None:
        if self.response is None:
            ids = {"response_id": f"resp-{self.number}", "item_id": f"item-{self.number}"}
            self.response = {**ids, "output_index": 0, "content_index": 0}
            item = {"id": ids["item_id"], "type": "message", "role": "assistant"}
            await self.send({"type": "response.created", "response": {"id": ids["response_id"]}})
            added = {"response_id": ids["response_id"], "output_index": 0, "item": item}
            await self.send({"type": "response.output_item.added", **added})
        if burst > 1:
            held = self.held = self.held or []
            held.append(audio)
            if len(held) < burst:
                return
            self.held = None
        else:
            held = [audio]
        kind = "response.output_audio.delta" if self.ga else "response.audio.delta"
        for delta in held:
            await self.send({"type": kind, **self.response, "delta": delta})
