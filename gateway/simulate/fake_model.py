"""`acs-media-gateway fake-model`: the fake realtime model's echo mode as a process of its own,
so that a bridged deployment can be load-tested end to end without a model (and its bill).

Owns: the command's flags, where it listens, and the lines it prints (its URL once it listens;
what it served when it stops). Never: the model's behaviour (`gateway.testing.fake_model` and
`fake_model_echo`, imported only when the command runs), or keeping what it served: a load test
may run for hours, so nothing is recorded.

    acs-media-gateway fake-model --port 8765
    # the gateway under test: [processors.realtime] endpoint = "ws://127.0.0.1:8765"
    acs-media-gateway simulate ws://127.0.0.1:8080/ --rate 24000 --calls 100 --duration 60

Every appended chunk of a caller's audio comes straight back as the model's audio, so each
bridged call carries audio both ways at the caller's rate; at 24 kHz (or 16 kHz with the
`voice-live` provider) nothing is resampled and the simulated callers hear exactly what they
said, which `simulate` checks frame by frame. SIGINT or SIGTERM stops it (exit 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
from typing import Any

import trio

DEFAULT_PORT = 8765


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `fake-model` to the main parser's subcommands."""
    model: argparse.ArgumentParser = commands.add_parser(
        "fake-model",
        help="a fake realtime model that echoes each call's audio (load-test a bridged gateway)",
        description="Serve the OpenAI Realtime protocol (GA and beta, and Voice Live's 16 kHz) "
        "as an echo: every input_audio_buffer.append comes back at once as the model's audio. "
        "Point the realtime processor's endpoint at the URL it prints.",
    )
    model.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    model.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any free port)"
    )
    model.add_argument(
        "--burst-ms",
        type=int,
        default=0,
        help="hold the answers until this much audio waits, then send it at once, as a real "
        "model streams a reply faster than real time (default 0: each at once)",
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
        trio.run(_serve, args, api_key, context)
    except* OSError as group:  # a bind failure, from inside the model's nursery
        failed = _first_leaf(group)
    if failed is not None:
        return fail(f"cannot listen on {args.host}:{args.port}: {failed.strerror or failed}")
    return 0


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _serve(args: argparse.Namespace, api_key: str | None, context: Any) -> None:
    from ..testing.fake_model import open_fake_model

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_fake_model(
            echo=True,
            echo_burst_ms=args.burst_ms,
            session_max_s=args.session_max_s,
            api_key=api_key,
            ssl_context=context,
            host=args.host,
            port=args.port,
            record=False,
        ) as model:
            print(f"fake model (echo) listening on {model.url}", flush=True)
            async for _ in signals:
                break
            print(
                f"fake model: sessions served: {model.connections}; open at exit: {model.live}",
                flush=True,
            )
