"""ACS's WebSocket token: checking the JWT that ACS puts in the upgrade request
(docs/protocol.md, "The token").

Owns: ACS's signing keys (a `KeySet`: fetched over HTTPS, cached, fetched again every
`auth_key_max_age` seconds and when a token names a key id we do not know, at most once per
`auth_key_refetch_interval`) and the checks on a token (`TokenChecker`): RS256 only, signature,
issuer, audience (the ACS resource's immutable id), expiry and not-before with a small leeway,
and that `exp`, `nbf` and `iat` are NumericDates (RFC 7519 section 2: JSON numbers; PyJWT
also takes numeric strings, which are refused here as `malformed`).
Never: logs, stores or echoes a token; waits for the network on the handshake's behalf beyond
the deadline the caller sets (fetches run in the key set's own task, under the server's service
nursery, with httpx on Trio); decides what the server answers (it raises `AuthFailure` with a
metric-friendly reason and the HTTP status to refuse with).

With a warm cache, checking a token awaits nothing: the cost is PyJWT's parse and one RSA
verification (bench/auth_handshake.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import jwt
import orjson
import pybase64
import trio

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("gateway.auth")

ALGORITHM: Final = "RS256"  # the only algorithm ACS signs with; anything else is refused
KEY_FETCH_TIMEOUT: Final = 5.0  # seconds one key-set fetch may take
MAX_KEY_SET_BYTES: Final = 1 << 20  # a key set is a few KB; refuse to hold more
REQUIRED_CLAIMS: Final = ["exp", "iss", "aud"]
DATE_CLAIMS: Final = ("exp", "nbf", "iat")  # NumericDates when present
# Token headers, in the order read: the docs' samples read Authorization, their prose says
# "Authentication" (docs/protocol.md, "Handshake").
TOKEN_HEADERS: Final = ("authorization", "authentication")


class AuthFailure(Exception):
    """A handshake that may not become a call. `reason` is a stable token for metrics; the
    message says why (never including the token)."""

    REASONS: Final = frozenset(
        {
            "missing_token",
            "malformed",
            "bad_algorithm",
            "no_key_id",
            "unknown_key",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "wrong_audience",
            "wrong_issuer",
            "missing_claim",
            "keys_unavailable",  # our problem, not the peer's: 503
            "call_token",  # the control plane's per-call token (gateway.control.tokens)
            "route",  # a media path naming no configured route
        }
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.status = 503 if reason == "keys_unavailable" else 401


class KeySet:
    """ACS's public signing keys by key id. `run()` is its task; `key()` is what checks use."""

    def __init__(self, url: str, *, refetch_interval: float, max_age: float) -> None:
        self.url = url
        self.refetch_interval = refetch_interval
        self.max_age = max_age
        self.keys: dict[str, Any] = {}  # kid -> a cryptography public key
        self.loaded = False  # at least one fetch succeeded
        self.first_fetch_done = trio.Event()  # the fetch at start has ended, however it went
        self.fetches = 0  # attempts, for metrics and tests
        self.fetch_failures = 0
        self._last_attempt = -math.inf
        self._last_refetch = -math.inf  # the last fetch an unknown key id asked for
        self._wanted = trio.Event()  # key() asks for a fetch
        self._fetching = False
        self._fetched = trio.Event()  # set when the fetch in progress (or the next one) ends

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch now, then on request and every `max_age` seconds (every `refetch_interval`
        while no fetch has succeeded yet), until cancelled."""
        import httpx  # here: a gateway without authentication never loads it

        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            task_status.started()
            while True:
                await self._fetch(client)
                wait = self.max_age if self.loaded else self.refetch_interval
                with trio.move_on_at(self._last_attempt + wait):
                    await self._wanted.wait()
                self._wanted = trio.Event()

    async def key(self, kid: str) -> Any | None:
        """The key for `kid`; fetches the key set again if it is unknown, at most once per
        `refetch_interval` for all unknown key ids together (or joins the fetch in progress).
        None: no such key."""
        key = self.keys.get(kid)
        if key is not None:
            return key
        if self._fetching:  # join it, rather than asking for another one behind it
            await self._fetched.wait()
        elif trio.current_time() - self._last_refetch >= self.refetch_interval:
            self._last_refetch = trio.current_time()
            fetched = self._fetched
            self._wanted.set()
            await fetched.wait()
        return self.keys.get(kid)

    async def _fetch(self, client: httpx.AsyncClient) -> None:
        import httpx

        self._fetching = True
        self._last_attempt = trio.current_time()
        self.fetches += 1
        try:
            with trio.fail_after(KEY_FETCH_TIMEOUT):
                response = await client.get(self.url, headers={"accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_KEY_SET_BYTES:
                raise ValueError(f"{len(response.content)} bytes is not a key set")
            keys = _parse_key_set(response.json())
        except (httpx.HTTPError, trio.TooSlowError, ValueError, jwt.PyJWTError) as exc:
            self.fetch_failures += 1
            log.warning(
                "could not fetch the signing keys from %s (%s); %s",
                self.url,
                exc or type(exc).__name__,
                "keeping the cached ones" if self.loaded else "no keys yet",
            )
        else:
            self.keys = keys
            self.loaded = True
            log.info("fetched %d signing key(s) from %s", len(keys), self.url)
        finally:
            self._fetching = False
            done, self._fetched = self._fetched, trio.Event()
            done.set()
            self.first_fetch_done.set()


def _parse_key_set(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ValueError("the key set is not a JSON object")
    keys = {}
    for jwk in jwt.PyJWKSet.from_dict(document).keys:  # skips keys it cannot use
        if jwk.key_id and jwk.key_type == "RSA" and jwk.public_key_use in (None, "sig"):
            keys[jwk.key_id] = jwk.key
    if not keys:
        raise ValueError("no RSA signing key with a key id in the key set")
    return keys


class TokenChecker:
    """Checks ACS's token in an upgrade request's headers."""

    def __init__(self, keys: KeySet, *, audience: str, issuer: str, leeway: float) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    async def check(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The token's claims if it is valid; raises AuthFailure otherwise."""
        token = bearer_token(headers)
        header = _peek_header(token)
        if header.get("alg") != ALGORITHM:
            alg = str(header.get("alg"))[:16]
            raise AuthFailure("bad_algorithm", f"alg {alg!r}, not {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("no_key_id", "the token names no signing key")
        key = await self.keys.key(kid)
        if key is None:
            if not self.keys.loaded:
                raise AuthFailure("keys_unavailable", "the signing keys could not be fetched")
            raise AuthFailure("unknown_key", f"no signing key {kid[:64]!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise AuthFailure(_reason(exc), str(exc)[:200]) from None
        for name in DATE_CLAIMS:
            if name in claims and not _numeric_date(claims[name]):
                kind = type(claims[name]).__name__
                raise AuthFailure("malformed", f"{name} is a {kind}, not a NumericDate (a number)")
        return claims


def _numeric_date(value: object) -> bool:
    """RFC 7519's NumericDate: a JSON number (true and false are not, though Python's bool is
    an int), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _peek_header(token: str) -> dict[str, Any]:
    """The token's (unverified) header: which key and algorithm it claims. PyJWT's
    `get_unverified_header` does the same at ~50 times the cost (it checks the alphabet of
    every character in Python), and `jwt.decode` checks everything again anyway."""
    segment = token.partition(".")[0]
    if token.count(".") != 2 or not segment:
        raise AuthFailure("malformed", "not a JWT")
    try:
        header = orjson.loads(pybase64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise AuthFailure("malformed", "not a JWT") from None
    if not isinstance(header, dict):
        raise AuthFailure("malformed", "not a JWT")
    return header


def bearer_token(headers: Mapping[str, str]) -> str:
    for name in TOKEN_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthFailure("malformed", f"the {name} header is not 'Bearer <token>'")
    raise AuthFailure("missing_token", "no Authorization header")


def _reason(exc: jwt.PyJWTError) -> str:
    # Order matters: the subclasses first (ExpiredSignatureError is an InvalidTokenError...).
    for kind, reason in (
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.ImmatureSignatureError, "not_yet_valid"),
        (jwt.InvalidAudienceError, "wrong_audience"),
        (jwt.InvalidIssuerError, "wrong_issuer"),
        (jwt.InvalidSignatureError, "bad_signature"),
        (jwt.MissingRequiredClaimError, "missing_claim"),
        (jwt.InvalidAlgorithmError, "bad_algorithm"),
    ):
        if isinstance(exc, kind):
            return reason
    return "malformed"
