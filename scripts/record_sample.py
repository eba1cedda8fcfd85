"""Make docs/assets/call-record.png: one simulated call's record, drawn by `show`.

    python scripts/record_sample.py [OUTPUT.png]

A 16 kHz call to the realtime processor, answered by the fake model (`gateway.testing`), with
recording and the event log on: the caller speaks, the bot answers, the caller barges in, presses
a key, and a transcription line arrives. Runs in a few seconds on Trio's autojump clock.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import orjson
import trio
import trio.testing

from gateway.config import Config
from gateway.processors import load
from gateway.records.disk import DISK
from gateway.records.timeline import load_record
from gateway.server.serve import serve
from gateway.show import draw
from gateway.testing import open_fake_model, simulated_call, speech

ROOT = Path(__file__).resolve().parent.parent


async def call(directory: str) -> None:
    os.environ["SAMPLE_REALTIME_KEY"] = "k"
    rate = 16000
    said = speech(rate)[: rate * 2 * 2]
    interrupt = speech(rate, "interrupt")[: rate * 2]
    async with open_fake_model([speech(24000)], api_key="k") as model:
        config = Config(
            host="127.0.0.1",
            port=0,
            processor="realtime",
            recording=True,
            call_events=True,
            recording_dir=directory,
        )
        options = {"endpoint": model.url, "api_key_env": "SAMPLE_REALTIME_KEY"}
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, load("realtime", options))
            async with simulated_call(server.urls[0], connection_id="sample-call") as acs:
                await acs.stream(said + bytes(rate * 3))
                await acs.stream(interrupt)
                await acs.send_dtmf("5")
                await acs.send_json(
                    {
                        "kind": "TranscriptionData",
                        "transcriptionData": {
                            "text": "Sorry, can you say that again?",
                            "resultStatus": "Final",
                        },
                    }
                )
                await acs.stream(bytes(rate * 2 * 2))
            server.stop_now()


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/assets/call-record.png"
    with tempfile.TemporaryDirectory() as directory:
        trio.run(call, directory, clock=trio.testing.MockClock(autojump_threshold=0))
        DISK.wait_idle(10)
        [record] = Path(directory).glob("*.jsonl")
        timeline = load_record(record)
        print(orjson.dumps(timeline.events[-1]).decode())
        draw(timeline, output, title="sample call")
    print(output)


if __name__ == "__main__":
    main()
