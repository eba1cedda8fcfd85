"""`acs-media-gateway simulate URL` (or `--control`): the subcommand's flags, and turning them
into a run.

Owns: flags, output (table, JSON, plot, recordings) and exit codes. Never: sending audio.

Exit codes: 0 the run met every check; 1 a check failed (a threshold, a default check such as
lost frames or an early close, a form other than `--require-form`), no call connected, or a
replay came back different; 2 bad flags or files.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

import attrs

TOKEN_ENV = "ACS_GATEWAY_SIMULATE_TOKEN"


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `simulate` to the main parser's subcommands."""
    p: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="run simulated ACS calls against a gateway (load test, barge-in, replay, --control)",
        description="Run N simulated ACS calls against a gateway and report what came back.",
    )
    p.add_argument(
        "url", nargs="?", help="the gateway's ws:// or wss:// URL (path included; not --control)"
    )
    load = p.add_argument_group("load")
    load.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds per call (10)")
    load.add_argument("--ramp", type=float, default=0.0, help="seconds to start all calls (0)")
    load.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    load.add_argument("--seed", type=int, help="seed for random hang-ups (repeatable runs)")
    audio = p.add_argument_group("what the callers send")
    audio.add_argument(
        "--rate",
        dest="sample_rate",
        type=int,
        choices=(16000, 24000),
        help="16000 (default) or 24000; not with --control (the gateway's answer chooses it)",
    )
    audio.add_argument("--unmixed", action="store_true", help="unmixed audio (participant ids)")
    audio.add_argument("--speakers", type=int, default=1, help="speakers per call (--unmixed)")
    audio.add_argument(
        "--wav",
        dest="wavs",
        action="append",
        default=[],
        metavar="FILE",
        help="16-bit mono WAV to speak, looped (repeat: one per speaker); default bundled speech",
    )
    audio.add_argument(
        "--turn", type=float, default=3.0, metavar="S", help="seconds of speech per turn (3)"
    )
    audio.add_argument(
        "--pause",
        type=float,
        default=1.5,
        metavar="S",
        help="silence that ends a turn (1.5; 0: speak without pauses)",
    )
    audio.add_argument(
        "--reply-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="longest wait for the bot to answer a turn (5)",
    )
    audio.add_argument(
        "--barge-in-after",
        type=float,
        metavar="S",
        help="caller is quiet until the bot has talked S seconds, then barges in",
    )
    audio.add_argument("--barge-in-wav", metavar="FILE", help="what the caller says to barge in")
    audio.add_argument(
        "--dtmf",
        action="append",
        default=[],
        metavar="S:TONE",
        help="press TONE S seconds into each call (repeatable), e.g. 2.5:5",
    )
    audio.add_argument(
        "--hangup-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of calls that drop the connection abruptly at a random moment",
    )
    server = p.add_argument_group("what the server should do")
    server.add_argument(
        "--expect",
        choices=("auto", "echo", "bot"),
        default="auto",
        help="echo: every frame must come back once, in order, unchanged (lost, reordered, "
        "corrupted fail the run); bot: no echo accounting; auto (default): echo when any "
        "frame sent came back",
    )
    server.add_argument(
        "--expect-hangup",
        action="store_true",
        help="the bot ends each call (close 1000) before the scenario does",
    )
    server.add_argument(
        "--require-form",
        choices=("sdk", "pascal", "java"),
        help="fail if the gateway sends any message in another form (sdk: the JS SDK's)",
    )
    control = p.add_argument_group(
        "control plane (--control: whole calls through a fake ACS, docs/simulate.md)"
    )
    control.add_argument(
        "--control",
        action="store_true",
        help="ring each call through a fake ACS: answer, media, then an end (--end)",
    )
    control.add_argument(
        "--gateway",
        metavar="URL",
        help="a running gateway's public https:// URL (default: start one in this process)",
    )
    control.add_argument("--end", default="mix", choices=("caller", "bot", "transfer", "mix"))
    control.add_argument(
        "--acs-fault",
        choices=("refuse-answer", "fail-streaming", "drop-callbacks"),
        help="the fake ACS misbehaves so",
    )
    control.add_argument(
        "--acs-ca", metavar="FILE", help="write the fake ACS's CA here (--gateway's trust)"
    )
    net = p.add_argument_group("connection")
    net.add_argument(
        "--token", help=f"bearer token for the Authorization header (better: ${TOKEN_ENV})"
    )
    net.add_argument("--ca-file", help="PEM CA bundle to verify a wss:// gateway")
    net.add_argument("--insecure", action="store_true", help="do not verify wss:// certificates")
    net.add_argument("--connect-timeout", type=float, default=10.0)
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    out.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    out.add_argument("--plot", metavar="FILE.png", help="draw a timeline of the first calls")
    out.add_argument("--plot-calls", type=int, default=3, help="calls in the plot (default 3)")
    out.add_argument("--record", metavar="FILE", help="save the first call(s) as JSON lines")
    out.add_argument("--record-calls", type=int, default=1)
    out.add_argument(
        "--replay",
        metavar="FILE",
        help="instead of a load test, replay a recording's caller side and compare the answer",
    )
    out.add_argument("--tolerance", type=float, default=0.1, help="replay timing slack (s)")
    out.add_argument(
        "--max",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="fail (exit 1) if METRIC is above VALUE, e.g. rtt_p99_ms=50 (repeatable); "
        "errors, lost, reordered, corrupted and unrecognised are 0 unless given",
    )
    out.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="fail (exit 1) if METRIC is below VALUE, e.g. calls_connected=100",
    )
    return p


def _dtmf(text: str) -> tuple[float, str]:
    at, sep, tone = text.partition(":")
    if not sep or not tone:
        raise ValueError(f"bad --dtmf {text!r}: use SECONDS:TONE, e.g. 2.5:5")
    return float(at), tone


def run(args: argparse.Namespace) -> int:
    import trio

    from . import checks, runner, workers
    from .options import Options

    def fail(message: str) -> int:
        print(f"acs-media-gateway simulate: {message}", file=sys.stderr)
        return 2

    try:
        maxima = [checks.parse_threshold(t) for t in args.max]
        minima = [checks.parse_threshold(t) for t in args.min]
        if args.control:
            if args.url is not None or args.replay or args.processes != 1:
                raise ValueError(
                    "--control takes no URL, --replay or --processes (--gateway URL names a "
                    "running gateway by its public https:// URL)"
                )
            if args.sample_rate is not None:
                raise ValueError(
                    "--control takes no --rate: the gateway's answer chooses the stream's rate "
                    "(its route's audio_format)"
                )
            return _control(args, maxima, minima)
        if args.url is None:
            raise ValueError("give the gateway's ws:// URL, or --control")
        # Flags are named after the Options fields they set (`dest`); these few need work.
        worked: dict[str, Any] = {
            "wavs": tuple(args.wavs),
            "dtmf": tuple(_dtmf(d) for d in args.dtmf),
            "token": args.token or os.environ.get(TOKEN_ENV) or None,
            "timeline_calls": args.plot_calls if args.plot else 0,
        }
        if args.sample_rate is None:  # the Options default (None only marks "not given")
            del args.sample_rate
        fields = {f.name for f in attrs.fields(Options)} & set(vars(args)) - set(worked)
        options = Options(**{name: getattr(args, name) for name in fields}, **worked)
        if options.calls < 1 or options.processes < 1 or options.duration <= 0:
            raise ValueError("--calls, --processes and --duration must be positive")
        runner.Engine(options, [])  # checks the URL, the WAV files and the scenario
        if args.plot:
            from . import plot

            plot.require()
        if args.replay:
            return _replay(args, options)
    except (ValueError, OSError, RuntimeError) as exc:
        return fail(str(exc))

    progress = None if args.quiet else workers.ProgressLine()
    result = trio.run(workers.run, options, progress)
    if progress is not None:
        progress.done()
    problems = checks.checks(result, maxima, minima, args.require_form)
    if args.json:
        _print_json({**result.to_json(), "failed": problems})
    else:
        print(result.table())
    if args.plot:
        from . import plot

        plot.plot(result.calls, args.plot, title=f"{args.url}: {options.calls} call(s)")
        print(f"timeline: {args.plot}", file=sys.stderr)
    for line in problems:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if problems else 0


def _control(
    args: argparse.Namespace, maxima: list[tuple[str, float]], minima: list[tuple[str, float]]
) -> int:
    import trio

    from ..errors import ConfigError
    from ..testing.fake_acs import FakeAcsError
    from . import control, control_report

    options = control.ControlOptions(
        calls=args.calls,
        duration=args.duration,
        ramp=args.ramp,
        end=args.end,
        expect=args.expect,
        gateway=args.gateway,
        ca_file=args.ca_file,
        insecure=args.insecure,
        acs_ca=args.acs_ca,
        fault=args.acs_fault,
        timeout=args.connect_timeout,
    )
    needs = ["trustme"] if args.gateway else ["trustme", "azure.communication.callautomation"]
    for module in needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise ValueError(
                "--control needs the testing and control extras: "
                "pip install 'acs-media-gateway[testing,control]'"
            )
    try:
        outcome = trio.run(control.run, options)
    except BaseExceptionGroup as group:  # the fake ACS's nursery: the gateway did not subscribe
        faults, rest = group.split((FakeAcsError, ConfigError, OSError))
        if faults is None or rest is not None:
            raise
        raise ValueError(f"--control: {_first(faults)}") from None
    problems = control_report.problems(outcome, maxima, minima)
    if args.json:
        _print_json(control_report.to_json(outcome, problems))
    else:
        print(control_report.table(outcome))
    for line in problems:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if problems else 0


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _replay(args: argparse.Namespace, options: Any) -> int:
    import trio

    from .recording import Recording, compare, replay

    original = Recording.read(args.replay)
    from ..acs.client import acs_headers

    headers = acs_headers(None, None, options.token or None)

    async def go() -> Recording:
        return await replay(original, args.url, ssl_context=options.ssl_context(), headers=headers)

    again = trio.run(go)
    if args.record:
        again.write(args.record)
    differences = compare(original, again, args.tolerance)
    summary = again.summary()
    if args.json:
        _print_json(
            {
                "replayed": args.replay,
                "messages_sent": len(original.sent()),
                "summary": summary,
                "differences": differences,
                "same": not differences,
            }
        )
        return 1 if differences else 0
    print(
        f"replayed {len(original.sent())} messages from {args.replay}: "
        f"{summary['audio_ms']} ms of audio back, {len(summary['stop_audio_s'])} stop-audio, "
        f"closed with {summary['close_code']}"
    )
    for line in differences:
        print(f"DIFFERENT: {line}")
    if not differences:
        print("the gateway answered as recorded")
    return 1 if differences else 0


def _print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
