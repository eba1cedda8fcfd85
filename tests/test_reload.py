"""SIGHUP reload: what may change in a running gateway, in process and in a real daemon."""

from __future__ import annotations

import logging
import re
import signal
import ssl

import pytest
import trio
import trio_websocket
import trustme

from gateway import config as configuration
from gateway.config import Config
from gateway.config_settings import RELOADABLE, SETTINGS
from gateway.ops.reload import plan, reload
from gateway.testing import open_gateway, simulated_call
from tests.test_cli import Daemon, daemon
from tests.test_docs import CONFIGURATION
from tests.test_health import http, no_live_calls, samples

FRAME = 640


def test_the_configuration_page_marks_exactly_the_reloadable_settings():
    marks = {}  # setting -> its "SIGHUP" cell in the configuration table
    for row in re.finditer(r"^\| `(\w+)` \| [^|]* \| [^|]* \| (\w+) \|", CONFIGURATION, re.M):
        marks[row.group(1)] = row.group(2)
    assert {name: marks.get(name) for name in SETTINGS} == {
        name: "reload" if name in RELOADABLE else "restart" for name in SETTINGS
    }
    assert {"log_level", "max_calls", "max_message_bytes", "inbound_queue_ms"} <= RELOADABLE
    assert not {"host", "port", "processor", "health_port"} & RELOADABLE


def test_a_plan_applies_the_reloadable_and_keeps_the_rest():
    running = Config(port=8080, max_calls=10)
    loaded = Config(port=9000, max_calls=5, log_level="debug", processor="other:make")
    change = plan(running, loaded)
    assert change.applied == ("log_level", "max_calls")
    assert change.ignored == ("port", "processor")
    assert change.config == Config(port=8080, max_calls=5, log_level="debug")


async def test_reload_in_process_new_calls_get_new_limits_live_calls_keep_theirs(tmp_path, caplog):
    path = tmp_path / "gateway.toml"
    path.write_text("max_calls = 2\n")

    def load() -> Config:
        return configuration.load(path, environ={}, overrides={"host": "127.0.0.1", "port": 0})

    big = bytes(FRAME * 3)  # one ~2.6 KB message: over the new max_message_bytes
    async with open_gateway(max_calls=2) as server:
        async with simulated_call(server.urls[0]) as before:
            path.write_text("max_calls = 1\nmax_message_bytes = 2000\n")
            assert reload(server, load) is not None
            assert server.config.max_calls == 1
            assert server.readiness() == (False, "at the limit of 1 calls")
            with pytest.raises(trio_websocket.HandshakeError) as refused:
                async with simulated_call(server.urls[0]):
                    pass
            assert refused.value.status_code == 503  # type: ignore[attr-defined]
            await before.send_audio(big)  # the live call keeps its 64 KB limit
            with trio.fail_after(5):
                await before.wait_for_audio(len(big))
            assert not before.closed.is_set()
        await no_live_calls(server)
        async with simulated_call(server.urls[0]) as after:  # a new call gets the new limit
            await after.send_audio(big)
            with trio.fail_after(5):
                await after.closed.wait()
            assert after.close_code == 1009
    assert "configuration reloaded: max_calls=1, max_message_bytes=2000" in caplog.text


async def test_a_bad_or_restart_only_change_leaves_the_running_configuration(tmp_path, caplog):
    path = tmp_path / "gateway.toml"

    def load() -> Config:
        return configuration.load(path, environ={}, overrides={"host": "127.0.0.1", "port": 0})

    async with open_gateway(max_calls=3) as server:
        running = server.config
        path.write_text('max_calls = "many"\n')
        with caplog.at_level(logging.INFO, "gateway.reload"):
            assert reload(server, load) is None
        assert server.config is running
        rejected = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(rejected) == 1 and "max_calls" in rejected[0].getMessage()

        path.write_text('max_calls = 3\nprocessor = "mypackage.bot:make"\n')
        with caplog.at_level(logging.INFO, "gateway.reload"):
            change = reload(server, load)
        assert change is not None and change.ignored == ("processor",)
        assert server.config.processor == "echo"
        assert any("processor changed" in r.getMessage() for r in caplog.records)
        async with simulated_call(server.urls[0]) as call:  # still serving, as before
            await call.stream(bytes(FRAME), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(FRAME)
        m = samples(server.metrics.exposition()[0].decode())
        assert m[("acs_gateway_config_reloads_total", (("result", "rejected"),))] == 1
        assert m[("acs_gateway_config_reloads_total", (("result", "applied"),))] == 1


async def logged(d: Daemon, pattern: str) -> re.Match[str]:
    """Wait for a daemon log line matching `pattern`."""
    with trio.fail_after(20):
        while True:
            for line in d.log:
                if found := re.search(pattern, line):
                    return found
            await trio.sleep(0.02)


async def test_sighup_in_a_real_daemon(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('health_host = "127.0.0.1"\nmax_calls = 5\n')
    async with daemon("--config", str(path), "--health-port", "0") as d:
        health = int((await logged(d, r"health and metrics on http://127\.0\.0\.1:(\d+)/"))[1])
        assert await http(health, "/readyz") == (200, "ready\n")
        async with simulated_call(d.url) as live:
            await live.stream(bytes(FRAME), realtime=False)
            with trio.fail_after(5):
                await live.wait_for_audio(FRAME)
            path.write_text('health_host = "127.0.0.1"\nmax_calls = 1\nlog_level = "debug"\n')
            d.process.send_signal(signal.SIGHUP)
            await logged(d, r"configuration reloaded: log_level='debug', max_calls=1")
            assert await http(health, "/readyz") == (503, "not ready: at the limit of 1 calls\n")
            with pytest.raises(trio_websocket.HandshakeError):
                async with simulated_call(d.url):
                    pass
            await live.stream(bytes(FRAME * 5), realtime=False)  # the live call goes on
            with trio.fail_after(5):
                await live.wait_for_audio(FRAME * 6)
            assert not live.closed.is_set()

            path.write_text('health_host = "127.0.0.1"\nmax_calls = 0\n')  # bad: rejected
            d.process.send_signal(signal.SIGHUP)
            await logged(d, r"reload rejected.*max_calls")
            assert await http(health, "/readyz") == (503, "not ready: at the limit of 1 calls\n")
            host, port = d.url.removeprefix("ws://").rsplit(":", 1)
            await (await trio.open_tcp_stream(host, int(port))).aclose()
            await logged(d, r"DEBUG .* closed during the handshake")  # the new level is on
            _, text = await http(health, "/metrics")
            m = samples(text)
            assert m[("acs_gateway_config_reloads_total", (("result", "applied"),))] == 1
            assert m[("acs_gateway_config_reloads_total", (("result", "rejected"),))] == 1
            assert m[("acs_gateway_audio_frames_in_total", ())] == 6
            assert m[("acs_gateway_live_calls", ())] == 1
            # serve froze what it loaded (gateway.ops.collector): the modules, tens of thousands
            assert m[("acs_gateway_gc_frozen_objects", ())] > 10_000
        d.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await d.process.wait() == 0


async def tls_handshake(url: str, context: ssl.SSLContext) -> bool:
    """Whether a TLS handshake with the gateway at `url` verifies under `context`."""
    host, port = url.removeprefix("wss://").rsplit(":", 1)
    stream = trio.SSLStream(
        await trio.open_tcp_stream(host, int(port)), context, server_hostname=host
    )
    try:
        with trio.fail_after(5):
            await stream.do_handshake()
        return True
    except trio.BrokenResourceError as exc:
        assert isinstance(exc.__cause__, ssl.SSLCertVerificationError)
        return False
    finally:
        await trio.aclose_forcefully(stream)


async def test_sighup_reloads_the_tls_certificate_for_new_handshakes_only(tmp_path, caplog):
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_ca, new_ca = trustme.CA(), trustme.CA()

    def install(ca: trustme.CA) -> None:  # a renewal overwrites the same files
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))

    def trusting(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    tls = {"tls_certfile": str(certfile), "tls_keyfile": str(keyfile)}

    def load() -> Config:
        return configuration.load(
            None, environ={}, overrides={"host": "127.0.0.1", "port": 0, **tls}
        )

    install(old_ca)
    async with open_gateway(**tls) as server:
        async with simulated_call(server.urls[0], ssl_context=trusting(old_ca)) as live:
            install(new_ca)
            assert reload(server, load) is not None
            assert not await tls_handshake(server.urls[0], trusting(old_ca))  # the old one is gone
            assert await tls_handshake(server.urls[0], trusting(new_ca))
            async with simulated_call(server.urls[0], ssl_context=trusting(new_ca)) as new:
                await new.stream(bytes(FRAME), realtime=False)  # ... the new one serves
                with trio.fail_after(5):
                    await new.wait_for_audio(FRAME)
            await live.stream(bytes(FRAME), realtime=False)  # the live call keeps its session
            with trio.fail_after(5):
                await live.wait_for_audio(FRAME)

            keyfile.write_text(
                trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes().decode()
            )
            assert reload(server, load) is None  # a key that does not match: rejected whole
            assert "tls_certfile/tls_keyfile" in caplog.text
            assert await tls_handshake(server.urls[0], trusting(new_ca))  # still the good one
            async with simulated_call(server.urls[0], ssl_context=trusting(new_ca)) as again:
                await again.stream(bytes(FRAME), realtime=False)
                with trio.fail_after(5):
                    await again.wait_for_audio(FRAME)


def test_turning_tls_on_or_off_needs_a_restart():
    plain = Config()
    secure = Config(tls_certfile="c.pem", tls_keyfile="k.pem")
    assert plan(plain, secure).ignored == ("tls_certfile", "tls_keyfile")
    assert plan(secure, plain).config == secure
    renewed = Config(tls_certfile="new.pem", tls_keyfile="new-key.pem")
    assert plan(secure, renewed).applied == ("tls_certfile", "tls_keyfile")
