"""`acs-media-gateway simulate`: flags, output, exit codes, the plot, replay from the command line.

The command runs its own `trio.run`, so it runs in a thread here while the gateway under test
serves in the test's Trio loop.
"""

from __future__ import annotations

import orjson
import pytest
import trio

from gateway.cli import main
from gateway.simulate import plot
from gateway.simulate.recording import Recording
from gateway.simulate.results import CallResult
from gateway.testing import open_gateway
from gateway.testing.processors import barge_in_bot


async def cli(*argv: str) -> int:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(main, ["simulate", *argv])


async def test_json_report_and_thresholds(capsys):
    async with open_gateway("echo") as server:
        url = server.urls[0]
        code = await cli(
            url,
            "--calls",
            "2",
            "--duration",
            "0.4",
            "--json",
            "--quiet",
            "--max",
            "errors=0",
            "--min",
            "rtt_frames=40",
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        report = orjson.loads(out.out)
        assert report["failed"] == []
        assert report["totals"]["frames_received"] == 40
        assert report["totals"]["rtt_frames"] == 40
        assert report["settings"]["calls"] == 2 and "token" not in report["settings"]
        assert len(report["calls"]) == 2

        # echo never sends stop-audio: a CI threshold on it fails the run
        code = await cli(url, "--duration", "0.2", "--quiet", "--min", "stop_audio=1")
        out = capsys.readouterr()
        assert code == 1
        assert "round trip" in out.out  # the readable table
        assert "FAILED: stop_audio = 0, below the minimum 1" in out.err


async def test_progress_goes_to_stderr(capsys):
    async with open_gateway("echo") as server:
        code = await cli(server.urls[0], "--duration", "1.2")
    out = capsys.readouterr()
    assert code == 0
    assert "calls up 1/1" in out.err and "frames sent" in out.err
    assert "calls up" not in out.out


async def test_token_from_the_environment(capsys, monkeypatch):
    seen = []

    async def listener(call):
        seen.append(call.headers.get("authorization"))
        async for _ in call.packets:
            pass

    monkeypatch.setenv("ACS_GATEWAY_SIMULATE_TOKEN", "from-env")
    async with open_gateway(listener) as server:
        assert await cli(server.urls[0], "--duration", "0.2", "--quiet") == 0
    assert seen == ["Bearer from-env"]


async def test_nothing_connected_fails():
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await cli(f"ws://127.0.0.1:{port}/", "--duration", "0.2", "--quiet") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://x/"], "not a ws:// or wss:// URL"),
        (["ws://x/", "--max", "speed=1"], "METRIC one of"),
        (["ws://x/", "--dtmf", "5"], "SECONDS:TONE"),
        (["ws://x/", "--wav", "/nonexistent.wav"], "No such file"),
        (["ws://x/", "--speakers", "2"], "unmixed"),
        (["ws://x/", "--calls", "0"], "must be positive"),
        (["ws://x/", "--replay", "/nonexistent.jsonl"], "No such file"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys):
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


async def test_plot_draws_a_timeline_png(tmp_path, capsys):
    png = tmp_path / "calls.png"
    async with open_gateway(barge_in_bot({})) as server:
        code = await cli(
            server.urls[0],
            "--calls",
            "2",
            "--duration",
            "1.5",
            "--barge-in-after",
            "0.3",
            "--dtmf",
            "1.2:5",
            "--quiet",
            "--plot",
            str(png),
            "--plot-calls",
            "2",
        )
    assert code == 0, capsys.readouterr().err
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    with pytest.raises(ValueError, match="no call kept a timeline"):
        plot.plot([CallResult(0, "x")], tmp_path / "empty.png")


async def test_record_then_replay_from_the_command_line(tmp_path, capsys):
    rec, again = tmp_path / "rec.jsonl", tmp_path / "again.jsonl"
    async with open_gateway("echo") as server:
        url = server.urls[0]
        assert await cli(url, "--duration", "0.5", "--quiet", "--record", str(rec)) == 0
        capsys.readouterr()
        assert await cli(url, "--replay", str(rec), "--record", str(again)) == 0
        assert "the gateway answered as recorded" in capsys.readouterr().out
        assert await cli(url, "--replay", str(rec), "--json") == 0
        replayed = orjson.loads(capsys.readouterr().out)
        assert replayed["same"] and replayed["differences"] == []
        assert replayed["summary"]["audio_ms"] > 0 and replayed["messages_sent"] > 20
    async with open_gateway(barge_in_bot({})) as server:  # a different processor answers
        assert await cli(server.urls[0], "--replay", str(rec)) == 1
        assert "DIFFERENT: audio received" in capsys.readouterr().out
        assert await cli(server.urls[0], "--replay", str(rec), "--json") == 1
        assert not orjson.loads(capsys.readouterr().out)["same"]
    assert len(Recording.read(again).received()) == len(Recording.read(rec).received())
