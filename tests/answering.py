"""A gateway that answers calls, wired to a fake ACS, for the end-to-end tests and the bench:
TLS on 127.0.0.1 (its own throwaway CA, trusted by the fake), `public_url` naming that port,
ACS's JWT checked on media and callbacks (the fake's issuer and a key-set server), the real
SDK answering with the fake's connection string, and Event Grid subscribed."""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
import trustme

from gateway.config import Config, Route
from gateway.control import ControlPlane
from gateway.control import plane as control_plane
from gateway.processors import Processor, load
from gateway.server.serve import Server, serve
from gateway.testing import AcsTokenIssuer, FakeAcs, open_fake_acs, serve_key_set
from gateway.testing.fake_acs import RESOURCE_ID

SECRET = "eventgrid-secret-for-tests"
CALL_TOKEN_KEY = "k" * 32


@attrs.define
class Answering:
    acs: FakeAcs
    server: Server
    control: ControlPlane
    public_url: str


@asynccontextmanager
async def open_answering(
    routes: Sequence[Route] = (),
    processors: Mapping[str, Processor] | None = None,
    **settings: Any,
) -> AsyncIterator[Answering]:
    """A fake ACS and an answering gateway subscribed to it. `processors`: names a route's
    `processor` may give besides the registered ones."""
    extra = dict(processors or {})

    def loader(name: str, options: Mapping[str, object]) -> Processor:
        return extra[name] if name in extra else load(name, options)

    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    issuer = AcsTokenIssuer()
    with tempfile.TemporaryDirectory(prefix="answering-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        public_url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            keys = await nursery.start(serve_key_set, issuer)
            async with open_fake_acs(issuer=issuer, client_ssl=trusting) as acs:
                config = Config(
                    host="127.0.0.1",
                    port=0,
                    public_url=public_url,
                    tls_certfile=str(cert),
                    tls_keyfile=str(key),
                    acs_resource_id=RESOURCE_ID,
                    auth_key_set_url=keys.url,
                    routes=tuple(routes),
                    **settings,
                )
                environ = {
                    "ACS_CONNECTION_STRING": acs.connection_string,
                    "ACS_GATEWAY_CALL_TOKEN_KEY": CALL_TOKEN_KEY,
                    "ACS_GATEWAY_EVENTGRID_SECRET": SECRET,
                }
                control = control_plane.from_config(config, environ, loader, **acs.sdk_options)
                assert control is not None
                default = control.processors["default"]
                start: Callable[..., Any] = partial(
                    serve, config, default, sockets=[sock], control=control
                )
                server: Server = await nursery.start(start)
                try:
                    await acs.subscribe(f"{public_url}/eventgrid?secret={SECRET}")
                    yield Answering(acs, server, control, public_url)
                finally:
                    server.stop_now()
            nursery.cancel_scope.cancel()
