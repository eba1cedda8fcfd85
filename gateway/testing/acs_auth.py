"""A stand-in for ACS's token issuer and key-set endpoint, for tests and benchmarks.

Owns: throwaway RSA signing keys, tokens shaped like ACS's WebSocket token (docs/protocol.md,
"The token"), and a tiny HTTP server on 127.0.0.1 that serves their key set (JWKS) and counts
fetches.

    issuer = AcsTokenIssuer()
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        async with open_gateway(acs_resource_id=RESOURCE, auth_key_set_url=keys.url) as server:
            token = issuer.token(audience=RESOURCE)
            async with simulated_call(server.urls[0], headers=[bearer(token)]) as call: ...
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import h11
import jwt
import orjson
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from ..config_settings import ACS_TOKEN_ISSUER


class AcsTokenIssuer:
    """Signs tokens like ACS does (RS256, `kid` in the header) with keys it makes itself."""

    def __init__(self, key_ids: tuple[str, ...] = ("acs-key-1",)) -> None:
        self.private_keys = {
            kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in key_ids
        }

    @property
    def key_id(self) -> str:
        return next(iter(self.private_keys))

    def key_set(self) -> dict[str, Any]:
        """The JWKS document the key-set endpoint serves."""
        keys = []
        for kid, private in self.private_keys.items():
            jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(
        self,
        audience: str,
        *,
        issuer: str = ACS_TOKEN_ISSUER,
        lifetime: float = 24 * 3600,
        issued: float | None = None,
        not_before: float | None = None,
        key_id: str | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """A token for `audience`, valid from `issued` (now) for `lifetime` seconds, signed by
        `key_id` (the first key); `claims` are added last (None values remove a claim)."""
        now = time.time() if issued is None else issued
        payload: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": int(now)}
        payload["exp"] = int(now + lifetime)
        if not_before is not None:
            payload["nbf"] = int(not_before)
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        kid = key_id or self.key_id
        private = self.private_keys.get(kid, self.private_keys[self.key_id])
        return jwt.encode(payload, private, algorithm="RS256", headers={"kid": kid})


def bearer(token: str, header: str = "Authorization") -> tuple[str, str]:
    """The handshake header ACS sends the token in (`simulated_call(headers=[...])`)."""
    return (header, f"Bearer {token}")


@attrs.define
class KeySetServer:
    """A running key-set endpoint: `url`, and `fetches` served so far. Set `hang` to make it
    accept requests and never answer, or `status` to answer with an error."""

    url: str = ""
    fetches: int = 0
    hang: bool = False
    status: int = 200


async def serve_key_set(
    issuer: AcsTokenIssuer, *, task_status: trio.TaskStatus[KeySetServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `issuer.key_set()` over plain HTTP on 127.0.0.1 (port 0) until cancelled."""
    state = KeySetServer()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    state.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/calling/keys"

    async def answer(stream: trio.SocketStream) -> None:
        http = h11.Connection(h11.SERVER)
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                http.receive_data(data)
            elif isinstance(event, h11.Request):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        state.fetches += 1
        if state.hang:
            await trio.sleep_forever()
        body = orjson.dumps(issuer.key_set()) if state.status == 200 else b"unavailable"
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        headers.append(("connection", "close"))
        reply = http.send(h11.Response(status_code=state.status, headers=headers))
        reply = (reply or b"") + (http.send(h11.Data(data=body)) or b"")
        reply += http.send(h11.EndOfMessage()) or b""
        await stream.send_all(reply)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await answer(stream)
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(state)
