"""ACS's HMAC-SHA256 request signing (the access-key scheme of its REST APIs), both sides.

Owns: the string to sign, signing a request as the SDKs do, and checking a signed request as
ACS does (docs/testing.md, "A fake ACS control plane"). Never does I/O, never logs a key.

    METHOD \\n path?query \\n <x-ms-date>;<host>;<x-ms-content-sha256>

signed with the base64-decoded access key; the `Authorization` header names the signed headers
(`HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<base64>`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from email.utils import formatdate

SCHEME = "HMAC-SHA256"
SIGNED_HEADERS = ("x-ms-date", "host", "x-ms-content-sha256")
# ACS refuses a request unless these three are among the signed headers.
REQUIRED_SIGNED = frozenset(SIGNED_HEADERS)


def content_hash(body: bytes) -> str:
    """`x-ms-content-sha256`: base64(SHA-256(body)); an absent body hashes as empty."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def string_to_sign(method: str, target: str, values: list[str]) -> str:
    """`target` is the path and query exactly as sent; `values` the signed headers' values."""
    return f"{method.upper()}\n{target}\n{';'.join(values)}"


def signature(access_key: str, message: str) -> str:
    """base64(HMAC-SHA256(base64-decoded access key, message))."""
    key = base64.b64decode(access_key)
    return base64.b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest()).decode()


def sign(
    method: str, target: str, host: str, body: bytes, access_key: str, date: str | None = None
) -> dict[str, str]:
    """The headers an SDK adds to a request for `target` (path?query) on `host`."""
    date = date or formatdate(usegmt=True)
    digest = content_hash(body)
    mac = signature(access_key, string_to_sign(method, target, [date, host, digest]))
    return {
        "x-ms-date": date,
        "x-ms-content-sha256": digest,
        "authorization": f"{SCHEME} SignedHeaders={';'.join(SIGNED_HEADERS)}&Signature={mac}",
    }


def refusal(
    method: str, target: str, headers: Mapping[str, str], body: bytes, access_key: str
) -> str | None:
    """Why ACS would refuse this request's signature (None: it is good). `headers` has
    lower-case names."""
    authorization = headers.get("authorization", "")
    scheme, _, params = authorization.partition(" ")
    if scheme != SCHEME:
        return "no HMAC-SHA256 Authorization header"
    fields = dict(part.partition("=")[::2] for part in params.split("&"))
    names = [name.strip().lower() for name in fields.get("SignedHeaders", "").split(";")]
    given = fields.get("Signature", "")
    if not REQUIRED_SIGNED <= set(names):
        return "SignedHeaders must include x-ms-date, host and x-ms-content-sha256"
    missing = [name for name in names if name not in headers]
    if missing:
        return f"signed header missing: {', '.join(missing)}"
    if headers["x-ms-content-sha256"] != content_hash(body):
        return "x-ms-content-sha256 does not match the body"
    try:
        expected = signature(
            access_key, string_to_sign(method, target, [headers[n] for n in names])
        )
        given_bytes = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        return "the signature is not base64"
    if not hmac.compare_digest(base64.b64decode(expected), given_bytes):
        return "the signature does not match"
    return None
