"""`acs-media-gateway fake-model`: the fake realtime model (`gateway.testing`) as a process of
its own, so that a bridged deployment can be load-tested end to end without a model (and its
bill).

Owns: the command's flags, where it listens, the replies it is given, and the lines it prints
(its URL once it listens; what it served when it stops). Never: the model's behaviour
(`gateway.testing.fake_model`, imported only when the command runs), or keeping what it served:
a load test may run for hours, so nothing is recorded.

    acs-media-gateway fake-model --port 8765
    # the gateway under test: [processors.realtime] endpoint = "ws://127.0.0.1:8765"
    acs-media-gateway simulate ws://127.0.0.1:8080/ --rate 24000 --calls 100 --duration 60

Two modes:
- echo (the default): every appended chunk of a caller's audio comes straight back as the
  model's audio, so each bridged call carries audio both ways at the caller's rate; at 24 kHz
  (or 16 kHz with the `voice-live` provider) nothing is resampled and the simulated callers hear
  exactly what they said, which `simulate` checks frame by frame.
- `--converse`: the model takes turns: server VAD by energy, and every caller turn answered with
  a spoken reply streamed faster than real time, as a real model does; a caller who speaks over
  it is heard (`speech_started`), so `simulate --barge-in-after` measures the gateway's
  stop-audio under load.

SIGINT or SIGTERM stops it (exit 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import wave
from collections.abc import Sequence
from typing import Any

import trio

from ..audio.samples import read_wav, speech
from ..errors import first_leaf

DEFAULT_PORT = 8765
REPLY_S = 3.0  # the bundled reply: the first seconds of the bundled speech clip
SPEED = 4.0  # a reply streams this many times faster than real time, as a real model's does
RATES = (16000, 24000)  # Voice Live's 16 kHz; the OpenAI and Azure OpenAI APIs' 24 kHz


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `fake-model` to the main parser's subcommands."""
    model: argparse.ArgumentParser = commands.add_parser(
        "fake-model",
        help="a fake realtime model, to load-test a bridged gateway without one",
        description="Serve the OpenAI Realtime protocol (GA and beta, and Voice Live's 16 kHz). "
        "By default an echo: every input_audio_buffer.append comes back at once as the model's "
        "audio. With --converse it takes turns and replies. Point the realtime processor's "
        "endpoint at the URL it prints.",
    )
    model.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    model.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any free port)"
    )
    model.add_argument(
        "--burst-ms",
        type=int,
        default=0,
        help="echo: hold the answers until this much audio waits, then send it at once, as a "
        "real model streams a reply faster than real time (default 0: each at once)",
    )
    model.add_argument(
        "--converse",
        action="store_true",
        help="take turns instead of echoing: server VAD by energy, each caller turn answered "
        "with a spoken reply",
    )
    model.add_argument(
        "--reply-wav",
        metavar="FILE",
        help=f"with --converse: the reply, 16-bit mono PCM at 16 or 24 kHz (sessions at the "
        f"other rate get none); default: {REPLY_S:g} s of bundled speech, at either rate",
    )
    model.add_argument(
        "--speed",
        type=float,
        default=SPEED,
        help="with --converse: stream each reply this many times faster than real time "
        f"({SPEED:g})",
    )
    model.add_argument(
        "--session-max-s",
        type=float,
        help="end every session this long after it opened (an error event session_expired, "
        "then the close), as the service does (default: never)",
    )
    model.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="refuse (401) handshakes without the key in this environment variable "
        "(default: any key, or none, is accepted)",
    )
    model.add_argument("--tls-certfile", help="serve wss:// with this certificate chain (PEM)")
    model.add_argument("--tls-keyfile", help="and this private key (PEM)")
    return model


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"acs-media-gateway fake-model: {message}", file=sys.stderr)
        return 2

    if args.burst_ms < 0 or not 0 <= args.port <= 65535:
        return fail("--burst-ms must be at least 0 and --port within 0-65535")
    if args.session_max_s is not None and args.session_max_s <= 0:
        return fail("--session-max-s must be above 0")
    if args.speed <= 0:
        return fail("--speed must be above 0")
    if (args.reply_wav or args.speed != SPEED) and not args.converse:
        return fail("--reply-wav and --speed go with --converse")
    if args.burst_ms and args.converse:
        return fail("--burst-ms is for the echo: not with --converse")
    replies: dict[int, Sequence[bytes]] = {}
    if args.converse:
        try:
            replies = _replies(args.reply_wav)
        except (OSError, ValueError, EOFError, wave.Error) as exc:
            return fail(f"--reply-wav: {exc}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            return fail(f"--api-key-env: ${args.api_key_env} is not set")
    if bool(args.tls_certfile) != bool(args.tls_keyfile):
        return fail("--tls-certfile and --tls-keyfile go together")
    context = None
    if args.tls_certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_certfile, args.tls_keyfile)
        except (OSError, ssl.SSLError) as exc:
            return fail(f"cannot load the TLS certificate or key: {exc}")
    failed: OSError | None = None
    try:
        trio.run(_serve, args, replies, api_key, context)
    except* OSError as group:  # a bind failure, from inside the model's nursery
        failed = first_leaf(group)
    if failed is not None:
        return fail(f"cannot listen on {args.host}:{args.port}: {failed.strerror or failed}")
    return 0


def _replies(wav: str | None) -> dict[int, Sequence[bytes]]:
    """The reply for each output rate a session may ask for."""
    if wav is None:
        return {rate: [speech(rate)[: int(REPLY_S * rate) * 2]] for rate in RATES}
    pcm, rate = read_wav(wav)
    if rate not in RATES or not pcm:
        raise ValueError(f"{wav}: need audio at 16000 or 24000 Hz, got {len(pcm)} bytes at {rate}")
    return {rate: [pcm]}


async def _serve(
    args: argparse.Namespace,
    replies: dict[int, Sequence[bytes]],
    api_key: str | None,
    context: ssl.SSLContext | None,
) -> None:
    from ..testing.fake_model import open_fake_model

    if args.converse:  # every turn answered, for as long as the call goes on
        mode: dict[str, Any] = {"rate_scripts": replies, "repeat": True, "speed": args.speed}
    else:
        mode = {"echo": True, "echo_burst_ms": args.burst_ms}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_fake_model(
            session_max_s=args.session_max_s,
            api_key=api_key,
            ssl_context=context,
            host=args.host,
            port=args.port,
            record=False,
            **mode,
        ) as model:
            kind = "conversation" if args.converse else "echo"
            print(f"fake model ({kind}) listening on {model.url}", flush=True)
            async for _ in signals:
                break
            print(
                f"fake model: sessions served: {model.connections}; open at exit: {model.live}",
                flush=True,
            )
