"""Hostile ACS peers: raw RFC 6455 client frames, generated garbage, and a raw socket to send it.

Owns: building what a broken or malicious peer puts on the wire (for the fuzz tests and
`bench/fuzz_live.py`), and a `Session`: one connection's opening, inputs and way of ending.
Never: checks the gateway's replies (the callers judge the outcome); writes well-formed frames
or packets itself (`gateway.acs.client` does, for every ACS client in the project).

Generators take a `random.Random`, so the same code serves the seeded benchmark and hypothesis
(`st.randoms()`), and a failing session is reproducible from its seed.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from typing import Any, Final

import attrs
import trio

from ..acs import client
from ..acs.packets import FRAME_MS, frame_bytes
from ..wire.framing import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, frame_header
from .peer import SimulatedCall

# A fixed key and subscription id: a seed gives the same bytes on every run.
SAMPLE_KEY: Final = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
SUBSCRIPTION_ID: Final = "5ac4b2b7-3b0f-4a4d-9a3e-2d3f6c1e8a11"
# An upgrade request as ACS sends it, without the empty line that ends it.
UPGRADE: Final = client.upgrade_request("x", "/", (), SAMPLE_KEY)[0][:-2]
LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
MASK: Final = b"\x37\xfa\x21\x3d"


def upgrade_request(*headers: tuple[str, str]) -> bytes:
    """An upgrade request as ACS sends it, with any extra headers."""
    return client.upgrade_request("x", "/", headers, SAMPLE_KEY)[0]


def client_frame(
    payload: bytes | str,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    mask: bytes | None = MASK,
    rsv: int = 0,
) -> bytes:
    """One client frame (masked unless `mask` is None, which a server must refuse), with the
    FIN and RSV bits as given, whatever RFC 6455 allows."""
    data = payload.encode() if isinstance(payload, str) else payload
    if mask is None:
        frame = bytearray(frame_header(opcode, len(data)) + data)
    else:
        frame = bytearray(client.masked_frame(opcode, data, mask))
    frame[0] = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF
    return bytes(frame)


# -- real packets, as ACS sends them --


def audio_packet(pcm: bytes, participant: str | None = None) -> dict[str, Any]:
    return client.audio_packet(pcm, participant)


def metadata_packet(rate: int = 16000) -> dict[str, Any]:
    return client.metadata_packet(rate, SUBSCRIPTION_ID)


REAL_PACKETS: Final = (
    metadata_packet(16000),
    metadata_packet(24000),
    audio_packet(bytes(range(256)) * 2 + bytes(128)),
    audio_packet(bytes(640), "8:acs:alice"),
    client.dtmf_packet("5"),
    {"kind": "TranscriptionMetadata", "transcriptionMetadata": {"locale": "en-us"}},
    {"kind": "TranscriptionData", "transcriptionData": {"text": "hi", "resultStatus": "Final"}},
)


def encode(obj: Any) -> bytes:
    """Any JSON value as compact JSON. `json`, not orjson: hostile values include integers past
    64 bits and lone surrogates, which orjson refuses to write."""
    return json.dumps(obj, separators=(",", ":")).encode()


# -- generators --


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased toward the shapes the codec looks at."""
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1 << 63, 16000, 24000, 8001, rng.randint(-(10**9), 10**9)])
    if choice == 3:
        return rng.choice([0.5, -1e308, 1e308, 16000.0])
    if choice in (4, 5):
        return rng.choice(["", "AudioData", "AudioMetadata", "PCM", "AA==", "\u0000", "é" * 3])
    if choice == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["kind", "audioData", "audioMetadata", "data", "sampleRate", "dtmfData", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, obj: Any) -> Any:
    """A real packet with one part changed: a key dropped or renamed, a value replaced."""
    if not isinstance(obj, dict) or not obj:
        return random_json(rng)
    obj = dict(obj)
    key = rng.choice(list(obj))
    action = rng.randrange(4)
    if action == 0:
        del obj[key]
    elif action == 1:
        obj[key + rng.choice(["", "x", "Data"])] = obj.pop(key)
    elif action == 2 and isinstance(obj[key], dict):
        obj[key] = mutate(rng, obj[key])
    else:
        obj[key] = random_json(rng)
    return obj


def mutated_bytes(rng: random.Random, data: bytes) -> bytes:
    """The encoded bytes of a packet with a flipped, dropped or inserted byte, or truncated."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        action = rng.randrange(4)
        if action == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif action == 1:
            del buf[at]
        elif action == 2:
            buf.insert(at, rng.randrange(256))
        else:
            del buf[at:]
    return bytes(buf)


def message_input(rng: random.Random) -> bytes:
    """One well-framed message with hostile content: arbitrary bytes, arbitrary JSON, or a
    mutated real packet (as text or binary)."""
    kind = rng.randrange(5)
    if kind == 0:
        return client_frame(rng.randbytes(rng.randrange(200)), rng.choice((OP_TEXT, OP_BINARY)))
    if kind == 1:
        return client_frame(encode(random_json(rng)))
    if kind == 2:
        return client_frame(encode(mutate(rng, rng.choice(REAL_PACKETS))))
    if kind == 3:
        data = mutated_bytes(rng, encode(rng.choice(REAL_PACKETS)))
        return client_frame(data, rng.choice((OP_TEXT, OP_BINARY)))
    return client_frame(rng.randbytes(rng.randrange(126)), OP_PING)


def frame_garbage(rng: random.Random) -> bytes:
    """Bytes that break RFC 6455 framing (the connection is over after them)."""
    kind = rng.randrange(9)
    payload = encode(rng.choice(REAL_PACKETS))
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        return client_frame(payload, mask=None)  # unmasked
    if kind == 2:
        return client_frame(payload, rsv=rng.randint(1, 7))
    if kind == 3:
        return client_frame(payload, rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xF)))  # reserved
    if kind == 4:
        return client_frame(payload, OP_PING, fin=rng.random() < 0.5)  # control over 125 bytes
    if kind == 5:
        return client_frame(payload, 0x0)  # continuation with nothing to continue
    if kind == 6:  # a claimed length far beyond any limit
        return bytes((0x81, 0xFF)) + struct.pack("!Q", rng.choice((1 << 63, 1 << 40, 70000)))
    if kind == 7:  # text that is not UTF-8
        return client_frame(b'{"kind":"\xff\xfe"}')
    # a close frame with a one-byte, invalid, or non-UTF-8 payload
    return client_frame(rng.choice((b"\x03", b"\x00\x00", b"\x03\xe8\xff")), OP_CLOSE)


ENDINGS: Final = ("close", "fin", "reset", "reset_mid_frame", "fin_mid_frame")


@attrs.frozen
class Session:
    """One hostile connection: `steps` are written in order (each one input), then `ending`."""

    steps: tuple[bytes, ...]
    ending: str
    close_code: int = 1000

    @property
    def inputs(self) -> int:
        return len(self.steps)


def random_session(rng: random.Random, max_steps: int = 20) -> Session:
    """Metadata (real, mutated or absent), hostile messages mixed with good audio, maybe
    framing garbage, then one of `ENDINGS`."""
    steps: list[bytes] = []
    opening = rng.randrange(4)
    if opening < 2:
        steps.append(client_frame(encode(metadata_packet(rng.choice((16000, 24000))))))
    elif opening == 2:
        steps.append(client_frame(encode(mutate(rng, metadata_packet()))))
    for _ in range(rng.randrange(max_steps)):
        if rng.random() < 0.2:
            steps.append(client_frame(encode(audio_packet(rng.randbytes(640)))))
        else:
            steps.append(message_input(rng))
    if rng.random() < 0.25:
        steps.append(frame_garbage(rng))
    code = rng.choice((1000, 1001, 1011, 3000, 4999, 1005, 999, 5000, 65535))
    return Session(tuple(steps), rng.choice(ENDINGS), code)


def good_connection(rng: random.Random, frames: int = 3) -> bytes:
    """Every byte a well-behaved ACS peer writes for a short call, from the upgrade request to
    its close frame (the material for cuts and splices)."""
    audio = [client_frame(encode(audio_packet(rng.randbytes(640)))) for _ in range(frames)]
    close = client_frame(struct.pack("!H", 1000), OP_CLOSE)
    return upgrade_request() + client_frame(encode(metadata_packet())) + b"".join(audio) + close


def cut_or_spliced(rng: random.Random) -> bytes:
    """A good connection's bytes cut at a random point, or with random bytes spliced in: sent
    verbatim from the first byte, then reset."""
    data = good_connection(rng)
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        return data[:at]
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


# -- the canary: a good call beside the hostile ones --


def canary_frame(k: int, sample_rate: int = 16000) -> bytes:
    """20 ms of audio at `sample_rate` that says which frame it is, so a lost or swapped frame
    shows."""
    return (k & 0xFFFFFFFF).to_bytes(4, "big") * (frame_bytes(sample_rate) // 4)


async def keep_talking(call: SimulatedCall, stop: trio.Event) -> None:
    """Send `canary_frame(k)` every 20 ms (absolute deadlines) until `stop` is set. Checks
    between frames only, so the call's record of what it sent is always exact."""
    start, k = trio.current_time(), 0
    while not stop.is_set():
        await call.send_audio(canary_frame(k, call.sample_rate))
        k += 1
        with trio.move_on_at(start + k * FRAME_MS / 1000):
            await stop.wait()


# -- the raw peer --


class RawPeer:
    """A TCP connection that speaks only what it is told to (no masking or protocol help)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, url: str) -> RawPeer:
        """A TCP connection to the gateway at `url` (ws://host:port), nothing sent yet."""
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    @classmethod
    async def connect(cls, url: str, *headers: tuple[str, str]) -> RawPeer:
        """Connected and the upgrade request sent (the reply is left unread). A connection the
        gateway refused at once (at its bound on pending handshakes) may be reset before the
        request is written: then the peer's writes find it closed, as they would later."""
        peer = await cls.open(url)
        await peer.send(upgrade_request(*headers))
        return peer

    async def send(self, data: bytes) -> bool:
        """Write; False if the gateway has already closed or reset the connection."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def read_until_closed(self) -> bytes:
        """Everything the gateway sends until it closes the connection."""
        received = bytearray()
        try:
            while chunk := await self.stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
        return bytes(received)

    async def play(self, session: Session) -> None:
        """Write the session's steps, then end it its way. Never waits for the gateway beyond
        what the kernel's buffers need; closes the socket before returning."""
        try:
            for step in session.steps:
                if not await self.send(step):
                    break
            if session.ending == "close":
                await self.send(client_frame(struct.pack("!H", session.close_code), OP_CLOSE))
                await self.stream.send_eof()
            elif session.ending == "fin":
                await self.stream.send_eof()
            elif session.ending == "reset":
                self.reset()
            elif session.ending == "reset_mid_frame":
                await self.send(client_frame(os.urandom(1000))[:300])
                self.reset()
            else:  # fin_mid_frame
                await self.send(client_frame(os.urandom(1000))[:300])
                await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    def reset(self) -> None:
        """Abort the connection with a TCP RST (no FIN), as a crashed peer or a middlebox does."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.stream.socket.close()
