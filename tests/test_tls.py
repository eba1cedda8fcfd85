"""wss:// served directly, with a throwaway CA (trustme)."""

from __future__ import annotations

import ssl

import trio
import trustme

from gateway.testing import open_gateway, simulated_call


async def test_echo_over_wss(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async with open_gateway(tls_certfile=str(certfile), tls_keyfile=str(keyfile)) as server:
        assert server.urls[0].startswith("wss://127.0.0.1:")
        async with simulated_call(server.urls[0], ssl_context=client_context) as call:
            pcm = bytes(range(256)) * 10
            await call.stream(pcm, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(len(pcm))
            assert call.received_pcm[: len(pcm)] == pcm
