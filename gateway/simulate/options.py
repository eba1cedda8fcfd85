"""What a load-simulation run is asked to do: `Options`, the simulator's settings as plain values.

Owns: the settings of a run (`cli` fills them from its flags), their JSON form (worker processes
get them on stdin, `workers`), and what follows from them alone: the `Scenario` (`script`), the
TLS context for wss://, and the file each recorded call is saved to. Never: connecting, sending
or timing a call (`runner`, `sim_call`), or parsing flags (`cli`).
"""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from .script import Scenario, build_scenario

EXPECT: Final = ("auto", "echo", "bot")


@attrs.frozen
class Options:
    """Everything a run needs; plain values, so worker processes get it as JSON."""

    url: str
    calls: int = 1
    duration: float = 10.0
    ramp: float = 0.0  # seconds over which calls start, evenly
    sample_rate: int = 16000
    unmixed: bool = False
    speakers: int = 1
    wavs: tuple[str, ...] = ()
    barge_in_after: float | None = None
    barge_in_wav: str | None = None
    dtmf: tuple[tuple[float, str], ...] = ()
    hangup_fraction: float = 0.0
    turn: float = 3.0
    pause: float = 1.5
    reply_timeout: float = 5.0
    expect: str = "auto"  # "echo": count loss, reorder, corruption; "bot": do not; "auto": see
    expect_hangup: bool = False  # the bot ends calls (close 1000) before the scenario does
    token: str | None = None  # sent as "Authorization: Bearer ..."; never printed or saved
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    timeline_calls: int = 0  # the first N calls keep a timeline (for --plot)
    record: str | None = None  # save the first `record_calls` calls here (JSON lines)
    record_calls: int = 1
    seed: int | None = None
    processes: int = 1

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Options:
        obj = dict(obj)
        obj["wavs"] = tuple(obj["wavs"])
        obj["dtmf"] = tuple(tuple(x) for x in obj["dtmf"])
        return cls(**obj)

    def scenario(self) -> Scenario:
        """The Scenario these options describe (raises ValueError for a bad one)."""
        if self.expect not in EXPECT:
            raise ValueError(f"--expect must be one of {', '.join(EXPECT)}, not {self.expect!r}")
        names = inspect.signature(build_scenario).parameters
        return build_scenario(**{name: getattr(self, name) for name in names})

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "wss":
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def record_path(self, index: int) -> Path | None:
        if self.record is None or index >= self.record_calls:
            return None
        path = Path(self.record)
        return (
            path if self.record_calls == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")
        )
