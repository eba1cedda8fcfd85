"""Replicas reaching each other: a call's live operations forwarded to the replica holding it.

Owns: the one internal request between replicas (`POST /replicas`, JSON, signed with a key
derived from the call-token key every replica shares), making it (`Replicas.post`) and
checking its signature (`ReplicaKey.check`). Two operations travel this way:

- `media`: the replica that accepted a call's media WebSocket tells the call's home (the
  replica that answered it, named in the call's tokens) that it holds the call; the home
  answers with the call connection id and the IncomingCall's caller, callee and custom
  context, or 410 when the call's answer failed, timed out, or the call has ended;
- `events`: a callback that must act on the live call (`gateway.control.live.ACTS`) goes to the
  call's home, and from there to the replica holding the media WebSocket.

Never: a cluster protocol. There is no membership, no gossip and no store: a replica knows
only its own `replica_url` and the home named in a signed token; the home knows which replica
claimed the call last. Never decides what an event does (`gateway.control.live`).

Security: the signature is HMAC-SHA256 over the time, the path and the body, under
HMAC(call-token key, "replicas"): a signature is no call token and a call token no signature;
one older or newer than `MAX_SKEW` seconds is refused, so a captured request replays for at
most that long (both operations are idempotent).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import httpx
import orjson

if TYPE_CHECKING:
    from .calls import IncomingCall

log = logging.getLogger("gateway.control")

REPLICA_PATH: Final = "/replicas"
SIGNATURE_HEADER: Final = "x-acs-gateway-replica"
MAX_SKEW: Final = 60.0  # seconds between replicas' clocks (and a request's transit)
FORWARD_TIMEOUT: Final = 2.0  # seconds for one forward; a callback's reply waits for it


def _derive(call_token_key: bytes) -> bytes:
    return hmac.digest(call_token_key, b"replicas", "sha256")


@attrs.frozen
class ReplicaKey:
    """Signs and checks requests between replicas, with a key derived from the call-token
    key (the argument)."""

    key: bytes = attrs.field(repr=False, converter=_derive)
    now: Callable[[], float] = time.time

    def sign(self, path: str, body: bytes) -> str:
        stamp = str(int(self.now()))
        return f"{stamp}.{self._mac(stamp, path, body)}"

    def check(self, signature: str, path: str, body: bytes) -> bool:
        stamp, _, mac = signature.partition(".")
        if not stamp.isdigit() or abs(int(stamp) - self.now()) > MAX_SKEW:
            return False
        return hmac.compare_digest(mac, self._mac(stamp, path, body))

    def _mac(self, stamp: str, path: str, body: bytes) -> str:
        digest = hmac.new(self.key, f"{stamp}\n{path}\n".encode(), hashlib.sha256)
        digest.update(body)
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


@attrs.frozen
class Reply:
    """A replica's answer: its status and JSON body (None: no answer, see `error`)."""

    status: int | None
    body: Mapping[str, Any] = attrs.Factory(dict)
    error: str = ""


class Replicas:
    """This replica (`own_url`) and the requests it sends to the others."""

    def __init__(
        self,
        own_url: str,
        key: ReplicaKey,
        *,
        timeout: float = FORWARD_TIMEOUT,
        verify: ssl.SSLContext | bool = True,
        counts: Counter[str] | None = None,
    ) -> None:
        self.own_url = own_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._verify = verify
        self._tls: ssl.SSLContext | None = None  # made once: a CA bundle costs ~100 ms to load
        self.forwards: Counter[str] = Counter() if counts is None else counts  # "events:ok", ...

    def is_own(self, url: str) -> bool:
        return url.rstrip("/") == self.own_url

    def _context(self) -> ssl.SSLContext | bool:
        if not self._verify:
            return False
        if isinstance(self._verify, ssl.SSLContext):
            return self._verify
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def post(self, url: str, operation: str, fields: Mapping[str, Any]) -> Reply:
        """Send one operation to the replica at `url`; never raises but for cancellation."""
        body = orjson.dumps({"op": operation, **fields})
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: self.key.sign(REPLICA_PATH, body),
        }
        try:
            async with httpx.AsyncClient(verify=self._context(), timeout=self.timeout) as client:
                response = await client.post(
                    url.rstrip("/") + REPLICA_PATH, content=body, headers=headers
                )
            reply = Reply(response.status_code, _json(response.content))
        except httpx.HTTPError as exc:
            reply = Reply(None, error=f"{type(exc).__name__}: {exc}")
        outcome = "ok" if reply.status == 200 else str(reply.status or "unreachable")
        self.forwards[f"{operation}:{outcome}"] += 1
        if reply.status is None or reply.status >= 500:
            log.warning("replica %s: %s failed: %s", url, operation, reply.error or reply.status)
        elif reply.status == 403 and not reply.body:
            log.error(
                "replica %s refused our signature: is ACS_GATEWAY_CALL_TOKEN_KEY the same on "
                "every replica, and are their clocks within %g s?",
                url,
                MAX_SKEW,
            )
        return reply


def _json(content: bytes) -> Mapping[str, Any]:
    try:
        value = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def incoming_fields(incoming: IncomingCall | None) -> dict[str, Any] | None:
    """What a processor on another replica sees of the IncomingCall (never its context)."""
    if incoming is None:
        return None
    return {
        "caller": incoming.caller,
        "callee": incoming.callee,
        "caller_display_name": incoming.caller_display_name,
        "sip_headers": dict(incoming.sip_headers),
        "voip_headers": dict(incoming.voip_headers),
        "server_call_id": incoming.server_call_id,
        "correlation_id": incoming.correlation_id,
    }


def incoming_from(fields: Any) -> IncomingCall | None:
    """The IncomingCall data a home replica sent (None if it sent none or garbage)."""
    from .calls import IncomingCall  # the SDK: answering replicas have it

    if not isinstance(fields, dict):
        return None

    def text(name: str) -> str:
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    def headers(name: str) -> dict[str, str]:
        value = fields.get(name)
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items()}

    return IncomingCall(
        caller=text("caller") or None,
        callee=text("callee") or None,
        caller_display_name=text("caller_display_name"),
        sip_headers=headers("sip_headers"),
        voip_headers=headers("voip_headers"),
        server_call_id=text("server_call_id"),
        correlation_id=text("correlation_id"),
    )
