"""Sentences a person can act on, from ACS's result codes and streaming status details.

Owns: the table of likely causes and fixes (docs/answering.md, "Troubleshooting", shows the
same). Never: I/O or logging (the plane logs what this returns, with the call's ids).
"""

from __future__ import annotations

from typing import Final

_STREAMING_DETAILS: Final = {
    "streamUrlMissing": "the answer carried no transport URL; check `public_url`",
    "initialWebSocketConnectionFailed": (
        "ACS could not open the media WebSocket: is the transport URL reachable over wss:// "
        "from the internet (public DNS, a certificate from a public CA, port open)?"
    ),
    "streamConnectionUnsuccessful": (
        "ACS could not keep the media WebSocket open: check that the gateway accepted it "
        "(its log line 'accepted /ws/...') and that nothing between closes it"
    ),
    "authenticationFailure": (
        "the media WebSocket was refused: a proxy or the gateway refused ACS's token or the "
        "call token (check `acs_resource_id` and that replicas share the call-token key)"
    ),
    "streamConnectionInterrupted": "the media WebSocket dropped during the call",
}


def explain(code: int | None, sub_code: int | None, details: str = "", url: str = "") -> str:
    """The likely cause and the fix of a failed answer or streaming, as one sentence."""
    where = f" (transport URL sent: {url})" if url else ""
    if sub_code == 8581:
        return (
            "the transport URL is wrong or not reachable over wss:// from the internet"
            f"{where}: ACS must reach it from outside, with a certificate from a public CA; "
            "a loopback, private or dev-tunnel address without WebSocket support fails like this"
        )
    if details in _STREAMING_DETAILS:
        return _STREAMING_DETAILS[details] + where
    if code == 401:
        return "ACS refused our credentials: check $ACS_CONNECTION_STRING or the managed identity"
    if code == 403:
        return "ACS forbade the request: the identity lacks a role on the ACS resource"
    if code in (400, 404):
        return (
            "ACS no longer knows the call: its incomingCallContext expired or it was already "
            "answered (by another replica, or a retried Event Grid delivery)"
        )
    if code is not None and code >= 500:
        return "ACS failed on its side; see the Azure status page, later calls may pass"
    return f"result code {code}/{sub_code}{where}"
