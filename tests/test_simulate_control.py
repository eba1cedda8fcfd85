"""`acs-media-gateway simulate --control`: whole calls through the fake ACS (ring, answer,
media, an end), the latencies and outcome counts in the report, and a refusing ACS failing the
run with the fault named. Real sockets on 127.0.0.1, real time, a few short calls."""

from __future__ import annotations

import base64
import socket
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio

from gateway.cli import main

pytest.importorskip("azure.communication.callautomation")
trustme = pytest.importorskip("trustme")

from gateway.config import Config, Route  # noqa: E402
from gateway.control import plane  # noqa: E402
from gateway.processors import load  # noqa: E402
from gateway.server.serve import serve  # noqa: E402
from gateway.simulate import control, control_bot, control_report  # noqa: E402


def test_whole_calls_report_latencies_and_ends(capsys):
    argv = ["simulate", "--control", "--calls", "3", "--duration", "0.4", "--json"]
    assert main(argv) == 0
    report = orjson.loads(capsys.readouterr().out)
    totals = report["control"]
    assert (totals["calls_answered"], totals["calls_streaming"], totals["calls_failed"]) == (
        3,
        3,
        0,
    )
    assert totals["ends"] == {"caller": 1, "bot": 1, "transfer": 1}
    names = ("answer", "media_connect", "gateway_answer")
    for name in [f"{n}_p{p}_ms" for n in names for p in (50, 99)]:
        assert isinstance(totals[name], float) and totals[name] > 0, name
    media = report["totals"]
    assert media["expect"] == "echo" and media["echoed"] == media["echo_expected"] == 3 * 20
    assert media["lost"] == media["corrupted"] == media["errors"] == 0
    assert media["rtt_frames"] == 3 * 20 and media["messages_by_form"] == {"sdk": 3 * 20}
    assert report["failed"] == []


def test_a_refused_answer_fails_the_run_naming_the_fault(capsys):
    argv = ["simulate", "--control", "--calls", "2", "--duration", "0.2"]
    assert main([*argv, "--acs-fault", "refuse-answer", "--connect-timeout", "0.5"]) == 1
    captured = capsys.readouterr()
    assert "control    2 rung, 0 answered, 0 streaming, 2 failed" in captured.out
    assert (
        "FAILED: 2 of 2 call(s) not answered: ACS refused the gateway's answer request "
        "(2 with 500)" in captured.err
    )


def test_flags_that_do_not_go_with_control(capsys):
    assert main(["simulate", "--control", "ws://127.0.0.1:1/"]) == 2
    assert "--control takes no URL" in capsys.readouterr().err
    assert main(["simulate", "--control", "--gateway", "http://127.0.0.1:1"]) == 2
    assert "--gateway must be the gateway's https:// public_url" in capsys.readouterr().err
    assert main(["simulate"]) == 2
    assert "give the gateway's ws:// URL, or --control" in capsys.readouterr().err
    assert main(["simulate", "--control", "--rate", "24000"]) == 2
    assert "--control takes no --rate" in capsys.readouterr().err


def test_a_gateway_that_cannot_be_subscribed_is_named(capsys, monkeypatch):
    key = base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv(
        "ACS_CONNECTION_STRING", f"endpoint=https://127.0.0.1:{free_port()}/;accesskey={key}"
    )
    monkeypatch.setenv("ACS_GATEWAY_EVENTGRID_SECRET", "s")
    dead = f"https://127.0.0.1:{free_port()}"
    assert main(["simulate", "--control", "--gateway", dead]) == 2
    assert (
        f"--control: validation of {dead}/eventgrid?secret=s answered None"
        in capsys.readouterr().err
    )


def test_thresholds_on_control_metrics(capsys):
    argv = ["simulate", "--control", "--calls", "1", "--duration", "0.2", "--end", "bot"]
    assert main([*argv, "--max", "answer_p99_ms=0", "--min", "calls_streaming=1"]) == 1
    assert "FAILED: answer_p99_ms = " in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("audio_format", [None, "pcm24KMono"])
async def test_against_a_running_gateway(tmp_path: Path, audio_format: str | None):
    """`--gateway URL`: the fake serves where the gateway's $ACS_CONNECTION_STRING says, and
    writes its CA where the gateway's SDK looks for it. The callers speak at the rate the
    gateway's answer asked for (its route's audio format)."""
    ca = trustme.CA()
    cert, key, ca_file, acs_ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem", "acs.pem"))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    public_url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    access_key = base64.b64encode(b"k" * 32).decode()
    environ = {
        "ACS_CONNECTION_STRING": f"endpoint=https://127.0.0.1:{free_port()}/;accesskey={access_key}",
        "ACS_GATEWAY_CALL_TOKEN_KEY": "t" * 32,
        "ACS_GATEWAY_EVENTGRID_SECRET": "s3cret",
    }
    config = Config(
        host="127.0.0.1",
        port=0,
        public_url=public_url,
        tls_certfile=str(cert),
        tls_keyfile=str(key),
        processor="gateway.simulate.control_bot:make",
        log_level="warning",
        routes=() if audio_format is None else (Route(name="main", audio_format=audio_format),),
    )
    control_plane = plane.from_config(config, environ, load, connection_verify=str(acs_ca))
    assert control_plane is not None
    bot = control_bot.make({})
    options = control.ControlOptions(
        calls=3, duration=0.2, gateway=public_url, ca_file=str(ca_file), acs_ca=str(acs_ca)
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve, config, bot, sockets=[sock], control=control_plane)
        )
        outcome = await control.run(options, environ)
        server.stop_now()
    assert control_report.problems(outcome) == []
    assert [c.ended for c in outcome.calls] == ["caller", "bot", "transfer"]
    assert [(c.result.frames_sent, c.result.echoed) for c in outcome.calls] == [(10, 10)] * 3
    assert control_plane.stats.answers == {"answered": 3}
    assert control_report.totals(outcome)["gateway_answer_p99_ms"] is None  # not in this process
