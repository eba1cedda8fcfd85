"""`acs-media-gateway dial TARGET --route NAME`: place one call whose media and callbacks go to
the running gateway (`gateway.control.dial`).

Owns: the subcommand's flags, its output and exit codes: 0 ACS accepted the call (it rings
now; the gateway takes it from there), 1 ACS refused it or could not be reached, 2 bad flags,
configuration or target. Never: waits for the call or serves anything.

It reads the configuration file and environment the daemon reads (`public_url`, the routes,
`$ACS_CONNECTION_STRING` or `acs_endpoint`, `$ACS_GATEWAY_CALL_TOKEN_KEY`), so that the tokens
it signs are the ones the daemon's replicas accept.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import orjson

from ..errors import ConfigError


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `dial` to the main parser's subcommands."""
    dial: argparse.ArgumentParser = commands.add_parser(
        "dial",
        help="place a call whose media streams to the running gateway",
        description="Place an outbound call through ACS Call Automation; its callbacks and "
        "media go to the gateway at public_url, which runs the route's processor.",
    )
    dial.add_argument("target", help="a phone number (+14255550123) or an ACS user id (8:acs:...)")
    dial.add_argument("--route", default="default", help="the route whose processor takes it")
    dial.add_argument("--config", metavar="FILE", help="the gateway's TOML configuration file")
    dial.add_argument(
        "--caller-id", help="the ACS phone number the callee sees (default: dial_caller_id)"
    )
    dial.add_argument("--display-name", help="the caller's display name")
    dial.add_argument("--json", action="store_true", help="print the placed call as JSON")
    return dial


def run(args: argparse.Namespace) -> int:
    import trio

    from .. import config as configuration
    from .. import logs
    from .dial import Dialer, DialFailed

    def fail(message: str, code: int) -> int:
        print(f"acs-media-gateway dial: {message}", file=sys.stderr)
        return code

    try:
        config = configuration.load(args.config)
        logs.configure(config.log_level, config.log_format)

        dialer = Dialer.from_config(config, os.environ)
        placed = trio.run(
            lambda: dialer.dial(
                args.target,
                args.route,
                caller_id=args.caller_id,
                display_name=args.display_name,
            )
        )
    except (ConfigError, ValueError) as exc:
        return fail(str(exc), 2)
    except DialFailed as exc:
        return fail(str(exc), 1)
    if args.json:
        fields = ("call_connection_id", "correlation_id", "target", "route")
        sys.stdout.write(orjson.dumps({f: getattr(placed, f) for f in fields}).decode() + "\n")
    else:
        print(
            f"dialled {placed.target} on route {placed.route}: call connection "
            f"{placed.call_connection_id}, correlation {placed.correlation_id}"
        )
    logging.shutdown()
    return 0
