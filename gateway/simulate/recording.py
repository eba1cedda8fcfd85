"""Recorded sessions: what one call sent and received, with timings, as JSON lines; replaying
the sent side against a gateway; comparing what came back.

Owns: the file format and replay. Never: deciding what a call says (that is `script`).

Format (one JSON object per line, UTF-8):

    {"recording": 1, "sample_rate": 16000, "connection_id": "...", "headers": [["name", "v"]]}
    {"t": 0.0, "dir": "sent", "msg": "{\"kind\":\"AudioMetadata\",...}"}
    {"t": 0.0213, "dir": "received", "msg": "{\"kind\":\"audioData\",...}"}
    {"t": 5.02, "dir": "closed", "code": 1000}

`t` is seconds from the call's start (its first message), `msg` the message exactly as it went
over the WebSocket (binary messages as base64 with `"binary": true`). `sent` is the ACS side
(what the simulator sent); `received` is what the gateway sent back.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import pybase64
import trio

from ..acs import client
from ..acs.packets import pcm_ms
from ..testing.peer import SimulatedCall, simulated_call
from .tagging import b64_pcm_bytes

FORMAT_VERSION = 1


@attrs.define
class Entry:
    t: float
    dir: str  # "sent" | "received" | "closed"
    msg: str | bytes = ""
    code: int | None = None


@attrs.define
class Recording:
    sample_rate: int
    connection_id: str | None = None
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    entries: list[Entry] = attrs.field(factory=list)

    # -- files --

    def write(self, path: str | Path) -> None:
        header = {
            "recording": FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "connection_id": self.connection_id,
            "headers": self.headers,
        }
        with open(path, "wb") as f:
            f.write(orjson.dumps(header) + b"\n")
            for e in self.entries:
                line: dict[str, Any] = {"t": round(e.t, 6), "dir": e.dir}
                if e.dir == "closed":
                    line["code"] = e.code
                elif isinstance(e.msg, bytes):
                    line["msg"] = pybase64.b64encode_as_string(e.msg)
                    line["binary"] = True
                else:
                    line["msg"] = e.msg
                f.write(orjson.dumps(line) + b"\n")

    @classmethod
    def read(cls, path: str | Path) -> Recording:
        """Load a recording; raises ValueError naming the file and line when it is not one."""
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        try:
            header = orjson.loads(lines[0])
            if header.get("recording") != FORMAT_VERSION:
                raise ValueError("not a version 1 recording")
            rec = cls(
                header["sample_rate"],
                header.get("connection_id"),
                [tuple(h) for h in header.get("headers", [])],
            )
        except (IndexError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a recording ({exc})") from None
        for n, raw in enumerate(lines[1:], start=2):
            try:
                obj = orjson.loads(raw)
                msg = obj.get("msg", "")
                if obj.get("binary"):
                    msg = pybase64.b64decode(msg)
                rec.entries.append(Entry(float(obj["t"]), obj["dir"], msg, obj.get("code")))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {n}: {exc}") from None
        return rec

    @classmethod
    def from_call(cls, call: SimulatedCall) -> Recording:
        """What a `gateway.testing` simulated call sent and received so far."""
        rec = cls(call.sample_rate, call.connection_id, list(call.headers))
        for t, direction, message in call.transcript:
            rec.entries.append(Entry(t - call.started, direction, message))
        if call.closed.is_set() and call.close_code is not None:
            rec.entries.append(Entry(rec.duration, "closed", code=call.close_code))
        return rec

    # -- what is in it --

    @property
    def duration(self) -> float:
        return max((e.t for e in self.entries), default=0.0)

    def sent(self) -> list[Entry]:
        return [e for e in self.entries if e.dir == "sent"]

    def received(self) -> list[Entry]:
        return [e for e in self.entries if e.dir == "received"]

    def summary(self) -> dict[str, Any]:
        """What came back: audio (ms), stop-audio times, first audio, close code."""
        audio_ms = 0.0
        first = None
        stops = []
        for e in self.received():
            kind, data = client.classify(e.msg)
            if kind == client.AUDIO:
                audio_ms += pcm_ms(b64_pcm_bytes(data), self.sample_rate)
                first = e.t if first is None else first
            elif kind == client.STOP:
                stops.append(e.t)
        closes = [e.code for e in self.entries if e.dir == "closed"]
        return {
            "audio_ms": round(audio_ms, 1),
            "first_audio_s": first,
            "stop_audio_s": stops,
            "close_code": closes[0] if closes else None,
        }


def compare(expected: Recording, actual: Recording, tolerance: float = 0.1) -> list[str]:
    """How `actual` (a replay) differs from `expected` (the recording) in what came back: audio
    length (within `tolerance` seconds), stop-audio count and times, close code. Empty: the
    gateway answered the same way."""
    want, got = expected.summary(), actual.summary()
    out = []
    if abs(want["audio_ms"] - got["audio_ms"]) > tolerance * 1000:
        out.append(f"audio received: {got['audio_ms']} ms, recorded {want['audio_ms']} ms")
    if len(want["stop_audio_s"]) != len(got["stop_audio_s"]):
        out.append(
            f"stop-audio: {len(got['stop_audio_s'])} events, recorded {len(want['stop_audio_s'])}"
        )
    else:
        for i, (w, g) in enumerate(zip(want["stop_audio_s"], got["stop_audio_s"], strict=True)):
            if abs(w - g) > tolerance:
                out.append(f"stop-audio #{i + 1} at {g:.3f} s, recorded at {w:.3f} s")
    if (want["first_audio_s"] is None) != (got["first_audio_s"] is None) or (
        want["first_audio_s"] is not None
        and abs(want["first_audio_s"] - got["first_audio_s"]) > tolerance
    ):
        out.append(f"first audio at {got['first_audio_s']} s, recorded {want['first_audio_s']} s")
    if want["close_code"] is not None and want["close_code"] != got["close_code"]:
        out.append(f"closed with {got['close_code']}, recorded {want['close_code']}")
    return out


async def replay(
    recording: Recording,
    url: str | None = None,
    *,
    stream: trio.abc.Stream | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: Sequence[tuple[str, str]] = (),
    tail: float = 1.0,
) -> Recording:
    """Send the recording's `sent` side at its original timings (to `url` or over `stream`),
    wait `tail` seconds after the last recorded message for the rest of the answer, and return
    what happened this time, as a Recording (compare it with `compare`)."""
    async with simulated_call(
        url,
        stream=stream,
        sample_rate=recording.sample_rate,
        connection_id=recording.connection_id,
        headers=headers,
        send_metadata=False,
        ssl_context=ssl_context,
    ) as call:
        await replay_into(call, recording, tail)
    return Recording.from_call(call)


async def replay_into(call: SimulatedCall, recording: Recording, tail: float = 1.0) -> None:
    """Send the recording's `sent` side through an open simulated call (one made with
    `send_metadata=False`) at its original timings, then wait up to `tail` seconds past the
    recording's end for the gateway to finish answering (or close)."""
    start = call.started
    for entry in recording.sent():
        await trio.sleep_until(start + entry.t)
        if call.closed.is_set():
            return
        await call.send_raw(entry.msg)
    with trio.move_on_at(start + recording.duration + tail):
        await call.closed.wait()
