"""A gateway that answers calls, wired to a fake ACS: the whole control plane offline.

Owns: `open_answering_gateway`: TLS on 127.0.0.1 (a throwaway CA the fake trusts),
`public_url` naming that port, ACS's JWT checked on media and callbacks (the fake's issuer, its
key set served on loopback), the real SDK answering with the fake's connection string (the
`control` extra), and the Event Grid subscription validated. Never reaches beyond loopback.

    async with open_answering_gateway(routes, {"agent": agent}) as gw:
        call = await gw.acs.ring(to="+18005550100")
        await call.media_connected.wait()      # answered through the SDK, media to the gateway
        placed = await gw.dialer().dial("+14255550123", caller_id="+18005550100")
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..config import Config, Route
from ..control import ControlPlane
from ..control import plane as control_plane
from ..processors import Processor, load
from ..server.serve import Server, serve
from .acs_auth import AcsTokenIssuer, serve_key_set
from .fake_acs import RESOURCE_ID, FakeAcs, open_fake_acs

if TYPE_CHECKING:
    from ..control.dial import Dialer

SECRET = "eventgrid-secret-for-tests"
CALL_TOKEN_KEY = "k" * 32


@attrs.define
class AnsweringGateway:
    """The running pair: the fake ACS, the gateway's `Server` and its control plane."""

    acs: FakeAcs
    server: Server
    control: ControlPlane
    public_url: str
    environ: dict[str, str] = attrs.Factory(dict)  # the gateway's: credentials, keys, secret

    def dialer(self) -> Dialer:
        """A `Dialer` with the gateway's configuration, placing calls through the fake."""
        from ..control.dial import Dialer  # the SDK: the control extra

        return Dialer.from_config(self.control.config, self.environ, **self.acs.sdk_options)


@asynccontextmanager
async def open_answering_gateway(
    routes: Sequence[Route] = (),
    processors: Mapping[str, Processor] | None = None,
    **settings: Any,
) -> AsyncIterator[AnsweringGateway]:
    """A fake ACS and a gateway answering its calls, subscribed to it. `processors`: names a
    route's `processor` (or the top-level one) may give besides the registered ones;
    `settings`: any other `Config` settings."""
    import trustme  # the `test` extra: `import gateway.testing` must work without it

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
                    yield AnsweringGateway(acs, server, control, public_url, environ)
                finally:
                    server.stop_now()
            nursery.cancel_scope.cancel()
