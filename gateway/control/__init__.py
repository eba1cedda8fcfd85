"""The Call Automation control plane: answering calls, their routes and per-call tokens.

Owns: the webhooks served on the media port (Event Grid's IncomingCall, Call Automation
callbacks), answering and placing calls (`dial`) through the official SDK (an optional extra,
imported lazily), routes, and the signed per-call tokens that let any replica accept a call's
media and callbacks.
Never: media (the server runs the call with the processor `ControlPlane.media` picks).
docs/answering.md is the user's page.
"""

from .answer import Answerer, AnswerFailed, AnswerRequest, SdkAnswerer
from .dial import DialedCall, Dialer, DialFailed, dial
from .plane import ControlPlane, ControlStats, HttpAnswer
from .tokens import CallGrant, CallTokens, TokenRefused

__all__ = [
    "AnswerFailed",
    "AnswerRequest",
    "Answerer",
    "CallGrant",
    "CallTokens",
    "ControlPlane",
    "ControlStats",
    "DialFailed",
    "DialedCall",
    "Dialer",
    "HttpAnswer",
    "SdkAnswerer",
    "TokenRefused",
    "dial",
]
