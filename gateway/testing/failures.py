"""What the processor under test raised, so that the simulated peer can say so.

Owns: `ProcessorFailed`, the record of an in-process gateway's processor exceptions by call
(`ProcessorFailures`, filled by `open_gateway`'s wrapper around the processor), and the lookup
from a gateway's URL to its record. Never: changes what the gateway does with the exception
(it still ends that call with 1011 and logs it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ..acs.packets import AudioData
from ..call.interface import AudioHandler, inline_audio_handler
from ..processors import Call, Processor


class ProcessorFailed(Exception):
    """The processor under test raised. `__cause__` is its exception, with the processor's own
    traceback; `connection_id` is the call's."""

    def __init__(self, message: str, connection_id: str | None) -> None:
        super().__init__(message)
        self.connection_id = connection_id


class ProcessorFailures:
    """The exceptions an in-process gateway's processor raised, by the call's connection id."""

    def __init__(self) -> None:
        self.errors: dict[str | None, Exception] = {}

    def watch(self, processor: Processor) -> Processor:
        """`processor`, recording what it raises (and raising it on, unchanged), from its
        coroutine and from its inline audio handler, which it keeps."""
        return _Watched(processor, self.errors)


@attrs.frozen
class _Watched:
    processor: Processor
    errors: dict[str | None, Exception]

    async def __call__(self, call: Call) -> None:
        try:
            await self.processor(call)
        except Exception as exc:
            self.errors.setdefault(call.connection_id, exc)
            raise

    def audio_handler(self, call: Call) -> AudioHandler | None:
        errors = self.errors
        try:
            hear = inline_audio_handler(self.processor, call)
        except Exception as exc:
            errors.setdefault(call.connection_id, exc)
            raise
        if hear is None:
            return None

        def watched(frame: AudioData) -> bool:
            try:
                return hear(frame)
            except Exception as exc:
                errors.setdefault(call.connection_id, exc)
                raise

        return watched


_BY_ORIGIN: dict[str, ProcessorFailures] = {}


def origin(url: str) -> str:
    """`scheme://host:port` of a URL: the key a gateway is known by."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def register(urls: list[str], failures: ProcessorFailures) -> None:
    for url in urls:
        _BY_ORIGIN[origin(url)] = failures


def unregister(urls: list[str]) -> None:
    for url in urls:
        _BY_ORIGIN.pop(origin(url), None)


def for_url(url: str | None) -> ProcessorFailures | None:
    """The record of the in-process gateway at `url`; None for any other server."""
    return None if url is None else _BY_ORIGIN.get(origin(url))
