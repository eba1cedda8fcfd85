"""wss:// served directly, with a throwaway CA (trustme)."""

from __future__ import annotations

import trio

from gateway.testing import open_gateway, simulated_call
from tests.daemons import throwaway_tls


async def test_echo_over_wss(tmp_path):
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    async with open_gateway(tls_certfile=str(certfile), tls_keyfile=str(keyfile)) as server:
        assert server.urls[0].startswith("wss://127.0.0.1:")
        async with simulated_call(server.urls[0], ssl_context=client_context) as call:
            pcm = bytes(range(256)) * 10
            await call.stream(pcm, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(pcm))
            assert call.received_pcm[: len(pcm)] == pcm


async def test_plaintext_and_silent_clients_cost_only_themselves(tmp_path):
    """A client that speaks plain HTTP to the wss:// port, and one that never starts TLS, are
    dropped (the TLS handshake counts against handshake_timeout); a real call goes on."""
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    settings = {"tls_certfile": str(certfile), "tls_keyfile": str(keyfile)}
    async with open_gateway(handshake_timeout=0.5, **settings) as server:
        async with simulated_call(server.urls[0], ssl_context=client_context) as call:
            plaintext = await trio.open_tcp_stream("127.0.0.1", server.port)
            silent = await trio.open_tcp_stream("127.0.0.1", server.port)
            await plaintext.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
            with trio.fail_after(5):
                assert await plaintext.receive_some(1024) == b""  # closed, no HTTP answer
                assert await silent.receive_some(1024) == b""  # dropped at the timeout
            await call.stream(bytes(640), realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
            assert not call.closed.is_set()
        assert server.stats.handshakes_failed == 2
        await plaintext.aclose()
        await silent.aclose()
