"""`simulate` fails a broken server by default and names the fault; it passes a correct one.

Each faulty server is the same small echo server (on the project's sans-IO wire pieces, not the
gateway) with one fault switched on. The command runs in a thread (it has its own `trio.run`)
while the server serves in the test's loop, on 127.0.0.1.
"""

from __future__ import annotations

import functools
import math

import attrs
import orjson
import pytest
import trio

from gateway.acs.packets import AudioData, DtmfData
from gateway.cli import main
from gateway.testing import open_gateway
from gateway.wire.connection import Connection, ConnectionState
from gateway.wire.events import Close, TextMessage
from gateway.wire.framing import encode_text
from gateway.wire.handshake import ServerHandshake


@attrs.frozen
class Fault:
    drop_every: int = 0  # leave out every Nth reply
    swap_every: int = 0  # send reply N before reply N - 1, every N frames
    form: str = "sdk"  # "sdk" | "pascal": how replies are spelt
    unknown_every: int = 0  # an unknown message after every Nth reply
    close_after: float | None = None  # close 1000 this many seconds into the call
    delay: float = 0.0  # every reply this much later


def _reply(data: str, form: str) -> bytes:
    if form == "pascal":
        message = {"Kind": "AudioData", "AudioData": {"Data": data}, "StopAudio": None}
    else:
        message = {"kind": "audioData", "audioData": {"data": data, "isSilent": False}}
    return orjson.dumps(message)


async def _connection(stream: trio.SocketStream, fault: Fault) -> None:
    handshake = ServerHandshake()
    while handshake.next_request() is None:
        handshake.receive_data(await stream.receive_some(65536))
    head, data = handshake.accept()
    await stream.send_all(head)
    ws = Connection(1 << 20)
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
    start = trio.current_time()

    async def writer() -> None:
        async for due, frame in receive:
            await trio.sleep_until(due)
            await stream.send_all(frame)

    async def closer() -> None:
        assert fault.close_after is not None
        await trio.sleep_until(start + fault.close_after)
        send.send_nowait((0.0, ws.send(Close(1000, "bye"))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        if fault.close_after is not None:
            nursery.start_soon(closer)
        n, held = 0, None
        while True:
            for event in ws.receive_data(data):
                if isinstance(event, Close):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        send.send_nowait((0.0, ws.send(Close(event.code))))
                    send.close()
                    return
                if ws.state is not ConnectionState.OPEN or not isinstance(event, TextMessage):
                    continue
                if b'"AudioData"' not in event.data:
                    continue
                n += 1
                due = trio.current_time() + fault.delay
                frame = _frame(_reply(orjson.loads(event.data)["audioData"]["data"], fault.form))
                if fault.drop_every and n % fault.drop_every == 0:
                    continue
                if fault.swap_every and n % fault.swap_every == fault.swap_every - 1:
                    held = frame
                    continue
                send.send_nowait((due, frame))
                if held is not None:
                    send.send_nowait((due, held))
                    held = None
                if fault.unknown_every and n % fault.unknown_every == 0:
                    send.send_nowait((due, _frame(b'{"kind":"mark","mark":{"sequence":1}}')))
            data = await stream.receive_some(65536)
            if not data:
                return


def _frame(payload: bytes) -> bytes:
    return encode_text(payload.decode())


async def cli(*argv: str) -> int:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(main, ["simulate", *argv, "--quiet"])


async def _serve(nursery: trio.Nursery, fault: Fault) -> str:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await _connection(stream, fault)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"


FAULTS = [
    (Fault(drop_every=10), [], "lost = 10, above the maximum 0"),
    (Fault(swap_every=25), [], "reordered = 4, above the maximum 0"),
    (Fault(form="pascal"), ["--require-form", "sdk"], "100 message(s) in the pascal form"),
    (Fault(unknown_every=25), [], "unrecognised = 4, above the maximum 0"),
    (Fault(close_after=0.6), [], "errors = 2 (closed_early: 2), above the maximum 0"),
    (Fault(delay=0.05), ["--max", "rtt_p99_ms=20"], "rtt_p99_ms = "),  # 50 ms, more if loaded
]


@pytest.mark.parametrize(("fault", "flags", "named"), FAULTS)
async def test_a_faulty_server_fails_the_run_and_is_named(fault, flags, named, capsys):
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, fault)
        code = await cli(url, "--calls", "2", "--duration", "1", *flags)
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert code == 1, out
    assert named in out.err, out.err
    assert "FAILED" in out.err


async def test_pascal_case_is_audio_reported_by_form_and_passes_without_require_form(capsys):
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, Fault(form="pascal"))
        code = await cli(url, "--duration", "1", "--json")
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert code == 0, out.err
    t = orjson.loads(out.out)["totals"]
    assert t["messages_by_form"] == {"pascal": 50} and t["frames_received"] == 50
    assert t["expect"] == "echo" and t["lost"] == t["reordered"] == t["corrupted"] == 0


async def test_the_faults_are_counted_per_call_in_the_json(capsys):
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, Fault(drop_every=10, swap_every=25, close_after=0.6))
        code = await cli(url, "--duration", "1", "--json")
        nursery.cancel_scope.cancel()
    report = orjson.loads(capsys.readouterr().out)
    (call,) = report["calls"]
    assert code == 1
    assert call["end"] == "closed_early" and call["close_code"] == 1000
    assert call["close_reason"] == "bye" and 0.5 < call["closed_at"] < 0.8
    assert call["lost"] == report["totals"]["lost"] > 0 and call["reordered"] == 1
    assert any("closed_early" in line for line in report["failed"])


async def test_a_correct_echo_server_passes_with_no_false_fault(capsys):
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, Fault())
        code = await cli(url, "--calls", "3", "--duration", "1", "--json", "--expect", "echo")
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert code == 0, out.err
    report = orjson.loads(out.out)
    t = report["totals"]
    assert t["lost"] == t["reordered"] == t["corrupted"] == t["unrecognised"] == 0
    assert t["echoed"] == t["echo_expected"] == 150 and t["messages_by_form"] == {"sdk": 150}
    assert [c["end"] for c in report["calls"]] == ["completed"] * 3
    assert report["failed"] == [] and report["overload"]["side"] != "gateway"


async def test_this_gateway_passes_echo_and_a_bot_that_hangs_up(capsys):
    async with open_gateway("echo") as server:
        code = await cli(server.urls[0], "--calls", "3", "--duration", "1", "--json")
    out = capsys.readouterr()
    assert code == 0, out.err
    t = orjson.loads(out.out)["totals"]
    assert t["expect"] == "echo" and t["echoed"] == t["echo_expected"] == 150
    assert t["lost"] == t["reordered"] == t["corrupted"] == t["errors"] == 0

    async def echo_until_pound(call):
        async for packet in call.packets:
            if isinstance(packet, DtmfData) and packet.tone == "#":
                return  # the bot hangs up: the gateway closes with 1000
            if isinstance(packet, AudioData) and call.player is not None:
                await call.player.play(packet.pcm)

    async with open_gateway(echo_until_pound) as server:
        url = server.urls[0]
        hangup = ["--calls", "6", "--duration", "1.5", "--dtmf", "0.5:#", "--json"]
        code = await cli(url, *hangup, "--expect-hangup")
        out = capsys.readouterr()
        assert code == 0, out.err
        report = orjson.loads(out.out)
        assert [c["end"] for c in report["calls"]] == ["bot_hung_up"] * 6
        assert all(c["errors"] == {} and c["close_code"] == 1000 for c in report["calls"])
        assert report["totals"]["lost"] == 0 and report["totals"]["echoed"] > 0

        code = await cli(url, *hangup)  # not expected: every call closed early, once
        out = capsys.readouterr()
        assert code == 1
        report = orjson.loads(out.out)
        assert [c["errors"] for c in report["calls"]] == [{"closed_early": 1}] * 6
        assert "errors = 6 (closed_early: 6)" in out.err


async def test_a_bot_that_never_replies_is_reported_not_waited_for(capsys):
    async def silent(call):
        async for _ in call.packets:
            pass

    async with open_gateway(silent) as server:
        code = await cli(
            server.urls[0],
            *("--duration", "2.5", "--barge-in-after", "0.3", "--turn", "0.4"),
            *("--reply-timeout", "0.5"),
        )
    out = capsys.readouterr()
    assert code == 1
    assert "no reply to barge in on" in out.out
    assert "no_reply_to_barge_in" in out.err
    assert "no audio came back" in out.out
