"""Property-based hostile input over live connections (the codec alone: tests/test_codec.py).

Each example runs a fresh gateway on 127.0.0.1 with a "canary" call streaming audio while the
generated hostile connections run concurrently: arbitrary byte messages, arbitrary JSON, mutated
real packets, raw RFC 6455 garbage, and connections closed, FIN'd or reset at any point
(even mid-frame or mid-handshake). Invariants, every example:

- no exception escapes a call: `calls_failed` stays 0 and the server keeps running;
- no cross-call effect: the canary's echo is byte-exact;
- nothing outlives its call: once the hostile calls end, the gateway holds exactly the tasks
  and file descriptors it held before them.

The bridged variants run the realtime processor against the fake model's echo mode, so every
hostile call that gets as far as its metadata opens a model session (and a 16 kHz one resamples
both ways): no model session outlives its call either, and the canary, at 24 kHz (passed
through), still hears exactly what it said.

Modest and deterministic (`derandomize=True`) for CI; `bench/fuzz_live.py` runs 100,000+ inputs.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from typing import Any
from unittest import mock

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.acs.packets import frame_bytes
from gateway.server.serve import ServerStats
from gateway.testing import open_fake_model, open_gateway, simulated_call
from gateway.testing.hostile import (
    OP_BINARY,
    OP_TEXT,
    RawPeer,
    Session,
    canary_frame,
    client_frame,
    encode,
    good_connection,
    metadata_packet,
    random_session,
)
from tests.conftest import open_fds, task_count

FUZZ = settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SETTLE_TIMEOUT = 10.0  # seconds; a safety net, the hostile calls end at once
KEY_ENV = "TEST_REALTIME_KEY"  # the bridged variants' (the fake model takes any key)


async def _run_hostile(
    sessions: Sequence[Session], raw: Sequence[bytes] = (), bridged: bool = False
) -> ServerStats:
    """Play `sessions` (and `raw` byte streams, sent verbatim from the first byte, upgrade
    included) concurrently beside a canary call; assert the invariants; return the counters.
    `bridged`: through the realtime processor and the fake model's echo mode."""
    if not bridged:
        return await _hostile_beside_canary(sessions, raw, {"processor": "echo"}, 16000)
    async with open_fake_model(echo=True) as model:
        options = {"endpoint": model.url, "api_key_env": KEY_ENV}
        processor = {"processor": "realtime", "processors": {"realtime": options}}
        with mock.patch.dict(os.environ, {KEY_ENV: "fuzz-key"}):  # read as the gateway starts
            stats = await _hostile_beside_canary(sessions, raw, processor, 24000)
        # no model session outlives its call
        await model.wait_for(lambda m: m.live == 0, timeout=SETTLE_TIMEOUT)
        assert 1 <= model.connections <= stats.calls_accepted
        return stats


async def _hostile_beside_canary(
    sessions: Sequence[Session], raw: Sequence[bytes], processor: dict[str, Any], rate: int
) -> ServerStats:
    frame = frame_bytes(rate)
    # A long playout lead: the echo comes back at once instead of at real-time pace.
    async with open_gateway(
        **processor, handshake_timeout=2.0, metadata_timeout=2.0, playout_lead_ms=5000
    ) as server:
        url = server.urls[0]
        async with simulated_call(url, connection_id="canary", sample_rate=rate) as canary:
            # two frames: a bridge sends the caller's audio up two frames an event
            for k in range(2):
                await canary.send_audio(canary_frame(k, rate))
            with trio.fail_after(SETTLE_TIMEOUT):
                await canary.wait_for_audio(frame)
            tasks, fds = task_count(), open_fds()

            async def hostile(session: Session) -> None:
                peer = await RawPeer.connect(url, ("x-ms-call-connection-id", "hostile"))
                await peer.play(session)

            async def verbatim(data: bytes) -> None:
                peer = await RawPeer.open(url)
                await peer.play(Session((data,), "reset"))

            async with trio.open_nursery() as nursery:
                for session in sessions:
                    nursery.start_soon(hostile, session)
                for data in raw:
                    nursery.start_soon(verbatim, data)
                for k in range(2, 8):  # the canary keeps talking while they run
                    await canary.send_audio(canary_frame(k, rate))
                    await trio.lowlevel.checkpoint()
            with trio.fail_after(SETTLE_TIMEOUT):
                await canary.wait_for_audio(frame * 8)
                while server.live > 1 or task_count() != tasks or open_fds() != fds:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            assert canary.received_pcm == bytes(canary.sent[None])
            assert not canary.closed.is_set()
            assert (task_count(), open_fds()) == (tasks, fds)
    stats = server.stats
    assert stats.calls_failed == 0
    # every connection counted once: the canary and each hostile one
    connections = stats.calls_accepted + stats.calls_refused + stats.handshakes_failed
    assert connections == 1 + len(sessions) + len(raw)
    return stats


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
message = st.one_of(
    st.binary(max_size=300).map(lambda b: client_frame(b, OP_BINARY)),
    st.binary(max_size=300).map(lambda b: client_frame(b, OP_TEXT)),
    json_values.map(lambda v: client_frame(json.dumps(v))),
    # real packet shapes with a hostile value in the payload
    st.builds(
        lambda kind, value: client_frame(encode({"kind": kind, kind[0].lower() + kind[1:]: value})),
        st.sampled_from(["AudioData", "AudioMetadata", "DtmfData", "TranscriptionData"]),
        json_values,
    ),
)
METADATA = client_frame(encode(metadata_packet()))
# connections of messages after a real metadata packet, each with an ending
message_connections = st.lists(
    st.tuples(st.lists(message, max_size=12), st.sampled_from(["close", "fin", "reset"])),
    min_size=1,
    max_size=4,
)
random_sessions = st.lists(
    st.randoms(use_true_random=False).map(random_session), min_size=1, max_size=6
)


@FUZZ
@given(message_connections)
def test_arbitrary_messages_on_live_connections(connections):
    sessions = [Session((METADATA, *msgs), ending) for msgs, ending in connections]
    trio.run(_run_hostile, sessions)


@FUZZ
@given(random_sessions)
def test_mutated_packets_frame_garbage_and_random_endings(sessions):
    trio.run(_run_hostile, sessions)


GOOD = good_connection(random.Random(5))


@FUZZ
@given(st.lists(st.integers(0, len(GOOD)), min_size=1, max_size=6))
def test_connections_reset_at_any_byte(cut_points):
    """TCP resets at every kind of point: inside the upgrade, between frames, mid-header,
    mid-payload."""
    trio.run(_run_hostile, [], [GOOD[:cut] for cut in cut_points])


@FUZZ
@given(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=64))
def test_garbage_spliced_into_a_good_connection(at, garbage):
    trio.run(_run_hostile, [], [GOOD[:at] + garbage + GOOD[at:]])


BRIDGED = settings(FUZZ, max_examples=15)


@BRIDGED
@given(random_sessions)
def test_bridged_calls_mutated_packets_frame_garbage_and_random_endings(sessions):
    trio.run(_run_hostile, sessions, (), True)


@BRIDGED
@given(message_connections)
def test_bridged_calls_arbitrary_messages(connections):
    sessions = [Session((METADATA, *msgs), ending) for msgs, ending in connections]
    trio.run(_run_hostile, sessions, (), True)
