"""deploy/nginx.conf, as shipped, in front of a gateway: wss:// terminated by a real nginx,
WebSocket upgrade, simulated calls through it. Skipped where nginx is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gateway.testing import open_gateway, simulated_call
from tests.daemons import TCP_LISTEN, free_port, kill_tree, poll_until, tcp_sockets, throwaway_tls

ROOT = Path(__file__).resolve().parent.parent
SITE = (ROOT / "deploy" / "nginx.conf").read_text()
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does it)"
)

MAIN = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/acs-media-gateway.conf;
}}
"""


def site_for_test(port: int, upstream: int, certfile: Path, keyfile: Path) -> str:
    """The shipped site file with only its addresses and certificate paths changed."""
    replacements = {
        r"listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        r"listen \[::\]:443 ssl;\n": "",
        r"server 127\.0\.0\.1:8080 ": f"server 127.0.0.1:{upstream} ",
        r"/etc/ssl/acs-media-gateway/fullchain\.pem": str(certfile),
        r"/etc/ssl/acs-media-gateway/privkey\.pem": str(keyfile),
    }
    site = SITE
    for pattern, replacement in replacements.items():
        site, count = re.subn(pattern, replacement, site)
        assert count == 1, f"deploy/nginx.conf no longer has {pattern!r}"
    return site


@asynccontextmanager
async def running_nginx(tmp_path: Path, site: str, port: int) -> AsyncIterator[trio.Process]:
    (tmp_path / "acs-media-gateway.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(MAIN.format(tmp=tmp_path))
    assert NGINX is not None
    process = await trio.lowlevel.open_process(
        [NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await poll_until(lambda: bool(tcp_sockets(port, TCP_LISTEN)) or process.poll() is not None)
        if process.returncode is not None:
            raise AssertionError("nginx did not start:\n" + (tmp_path / "error.log").read_text())
        yield process
    finally:
        kill_tree(process.pid)
        with trio.CancelScope(shield=True):
            await process.wait()


@pytest.fixture
def tls(tmp_path):
    return throwaway_tls(tmp_path)


async def test_calls_through_nginx_terminating_tls(tmp_path, tls):
    certfile, keyfile, client_context = tls
    port = free_port()
    async with open_gateway() as server:
        site = site_for_test(port, server.port, certfile, keyfile)
        async with running_nginx(tmp_path, site, port):
            url = f"wss://127.0.0.1:{port}"
            pcm = {n: bytes((n + i) % 256 for i in range(640 * 10)) for n in range(3)}
            results: dict[int, bytes] = {}

            async def one_call(n: int) -> None:
                async with simulated_call(
                    url, ssl_context=client_context, connection_id=f"via-nginx-{n}"
                ) as call:
                    await call.stream(pcm[n])  # real time: 200 ms
                    with trio.fail_after(10):
                        await call.wait_for_audio(len(pcm[n]))
                    results[n] = call.received_pcm

            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(one_call, n)
            log = tmp_path / "access.log"
            with trio.fail_after(10):  # nginx logs an upgrade when it has closed both sides
                while log.read_text().count('" 101 ') < 3:  # noqa: ASYNC110 - a file, no event
                    await trio.sleep(0.05)
        assert results == pcm  # byte for byte, through TLS and the proxy, both ways
        assert server.stats.calls_accepted == 3
        assert server.stats.protocol_errors == {}
    assert log.read_text().count('" 101 ') == 3  # three WebSocket upgrades, no more


async def test_a_draining_gateway_is_not_sent_new_calls(tmp_path, tls):
    """Two gateways behind nginx; one drains: new calls all go to the other, none is lost."""
    certfile, keyfile, client_context = tls
    port = free_port()
    async with open_gateway() as draining, open_gateway() as serving:
        site = site_for_test(port, draining.port, certfile, keyfile)
        site = site.replace(
            f"server 127.0.0.1:{draining.port} max_fails=0;",
            f"server 127.0.0.1:{draining.port} max_fails=0;\n"
            f"    server 127.0.0.1:{serving.port} max_fails=0;",
        )
        async with running_nginx(tmp_path, site, port):
            async with simulated_call(draining.urls[0]) as live:  # keeps `draining` busy
                draining.drain(30)
                for _ in range(4):
                    async with simulated_call(
                        f"wss://127.0.0.1:{port}", ssl_context=client_context
                    ) as call:
                        await call.stream(bytes(640), realtime=False)
                        with trio.fail_after(10):
                            await call.wait_for_audio(640)
                assert not live.closed.is_set()
        assert serving.stats.calls_accepted == 4
        assert draining.stats.calls_accepted == 1
    # nginx did try the draining gateway (its port closed) and moved on, as configured
    assert "Connection refused" in (tmp_path / "error.log").read_text()
