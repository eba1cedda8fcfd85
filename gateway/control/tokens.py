"""Per-call tokens: what lets any replica accept a call's media WebSocket or its callbacks.

Owns: making and checking the signed, self-contained token that the gateway puts in the
`transportUrl` and the `callbackUri` when it answers a call. Never: I/O, or state kept per call:
a token says everything a replica needs (the route, the call's correlation id, what it is for,
when it expires, and which replica answered the call), so replicas behind one load balancer
share only the key.

The token is `v1.<payload>.<mac>`: base64url (no padding) of a compact JSON payload
`{"r": route, "c": correlation id, "p": purpose, "x": expiry (Unix seconds)}`, plus
`"h": home` (the answering replica's `replica_url`) when replicas forward to each other
(`gateway.control.replicas`), and of its
HMAC-SHA256 under the replicas' shared key. The MAC is checked in constant time before the
payload is read; the wall clock (shared by replicas, unlike Trio's clock) decides expiry.

A call this gateway places (`gateway.control.dial`) has no correlation id when its URLs are
made: ACS assigns one when it creates the call. Its tokens name a dial id (`dial:<uuid>`)
instead, and are `dialled`: the plane cannot compare them with the call's correlation id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Final, Literal

import attrs
import orjson

VERSION: Final = "v1"
MAX_TOKEN_CHARS: Final = 1024  # a real token is ~150 characters; longer is not ours
DIAL_PREFIX: Final = "dial:"  # in place of the correlation id: a call we placed
Purpose = Literal["media", "callback"]


class TokenRefused(Exception):
    """A token that does not admit the request; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@attrs.frozen
class CallGrant:
    """What a valid token grants: one purpose, for one call, on one route, until `expires`."""

    route: str
    correlation_id: str
    purpose: Purpose
    expires: int
    home: str | None = None  # the answering replica's `replica_url`; None: one replica

    @property
    def dialled(self) -> bool:
        """A call this gateway placed: the token names its dial id, not its correlation id."""
        return self.correlation_id.startswith(DIAL_PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class CallTokens:
    """Makes and checks tokens with one key (at least 32 bytes: it is the replicas' secret)."""

    key: bytes = attrs.field(repr=False)
    lifetime: float = 14400.0
    now: Callable[[], float] = time.time

    def __attrs_post_init__(self) -> None:
        if len(self.key) < 32:
            raise ValueError("the call-token key must be at least 32 bytes")

    def issue(
        self, route: str, correlation_id: str, purpose: Purpose, home: str | None = None
    ) -> str:
        expires = int(self.now() + self.lifetime)
        fields: dict[str, str | int] = {"r": route, "c": correlation_id, "p": purpose, "x": expires}
        if home is not None:
            fields["h"] = home
        payload = _b64(orjson.dumps(fields))
        return f"{VERSION}.{payload}.{self._mac(payload)}"

    def check(self, token: str | None, purpose: Purpose) -> CallGrant:
        """The grant of a valid token for `purpose`; raises `TokenRefused` otherwise."""
        if not token:
            raise TokenRefused("missing", "no call token")
        parts = token.split(".")
        if len(token) > MAX_TOKEN_CHARS or len(parts) != 3 or parts[0] != VERSION:
            raise TokenRefused("malformed", "not a call token")
        if not hmac.compare_digest(parts[2], self._mac(parts[1])):
            raise TokenRefused("foreign", "call token signed with another key")
        try:
            fields = orjson.loads(_unb64(parts[1]))
            home = fields.get("h")
            grant = CallGrant(
                str(fields["r"]),
                str(fields["c"]),
                fields["p"],
                int(fields["x"]),
                None if home is None else str(home),
            )
        except (ValueError, KeyError, TypeError):  # signed by us, so only a bug gets here
            raise TokenRefused("malformed", "call token payload unreadable") from None
        if grant.purpose != purpose:
            raise TokenRefused("purpose", f"a {grant.purpose} token used for {purpose}")
        if grant.expires < self.now():
            raise TokenRefused("expired", "call token expired")
        return grant

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode("ascii"), hashlib.sha256).digest())
