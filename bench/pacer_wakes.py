"""The shared pacer on a real clock: lateness of paced releases and CPU, by `coalesce`.

    taskset -c 0 python bench/pacer_wakes.py
    taskset -c 0 python bench/pacer_wakes.py --players 200 --coalesce 0,0.0005,0.001 --rounds 3
    taskset -c 0 python bench/pacer_wakes.py --players 50 --coalesce 0.0005 --reply-s 10
    taskset -c 0 python bench/pacer_wakes.py --players 20 --coalesce 0 --early 0,0.002,0.005

Each player (one call's `Player`, writing to a socket that always takes the frames) plays three
2 s replies at once, so every frame after the first lead window waits for the pacer; players
start 0.7 ms apart, as calls would. `--reply-s` longer than the player's queue (5 s) has each
speaker blocked in `play()` for the rest of each reply, as a model's long reply streamed faster
than real time leaves the bridge's feeder task. Prints, per `coalesce` (seconds the pacer sleeps
past the earliest deadline, so that nearby deadlines share a wake-up) and round, the lateness of
the paced releases (p50, p99, max: what the gateway's `pacing_lateness_seconds` histogram holds)
and the process's CPU time. `--early` sets how far ahead of a deadline the pacer, once awake,
serves it (a release told early counts as on time). Rounds alternate the settings; read the
spread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.call.pacer import Pacer  # noqa: E402
from gateway.call.player import Player, Playout  # noqa: E402

FRAME = 640  # 20 ms at 16 kHz


class Sink:
    """A socket that takes every write at once."""

    def ready(self) -> bool:
        return True

    def send(self, frames: list[bytes]) -> bool:
        return True

    def send_stop(self) -> bool:
        return True


async def one_run(
    players: int, coalesce: float, early: float | None, reply_s: float
) -> list[float]:
    late: list[float] = []
    async with trio.open_nursery() as nursery:
        pacer = Pacer(coalesce) if early is None else Pacer(coalesce, early)
        await nursery.start(pacer.run)
        calls = [
            Player(Playout(16000, catchup_ms=0), pacer=pacer, direct=Sink(), on_late=late.append)
            for _ in range(players)
        ]

        async def send_task(player: Player) -> None:
            while True:
                await player.next_release()

        async def speak(player: Player, k: int) -> None:
            await trio.sleep(k * 0.0007)
            for _ in range(3):
                await player.play(bytes(FRAME * round(reply_s * 50)))
                await player.drain()

        async with trio.open_nursery() as speakers:
            for k, player in enumerate(calls):
                nursery.start_soon(send_task, player)
                speakers.start_soon(speak, player, k)
        nursery.cancel_scope.cancel()
    return sorted(late)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--players", type=int, default=100)
    parser.add_argument("--coalesce", default="0,0.001", help="seconds, comma-separated")
    parser.add_argument(
        "--early", help="seconds, comma-separated (default: the pacer's own, EARLY)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reply-s", type=float, default=2.0, help="seconds of each reply")
    args = parser.parse_args()
    earlies = [None] if args.early is None else [float(e) for e in args.early.split(",")]
    settings = [(float(c), e) for c in args.coalesce.split(",") for e in earlies]
    print(f"{args.players} players; lateness of paced releases in ms, CPU of the whole run")
    for round_ in range(args.rounds):
        for coalesce, early in settings:
            started = time.process_time()
            late = trio.run(one_run, args.players, coalesce, early, args.reply_s)
            cpu = time.process_time() - started

            def q(p: float, late: list[float] = late) -> float:
                return late[int(p * (len(late) - 1))] * 1000

            print(
                f"round {round_ + 1} coalesce {coalesce * 1000:.2f} ms"
                + ("" if early is None else f", early {early * 1000:.1f} ms")
                + f": {len(late)} releases, "
                f"p50 {q(0.5):.2f} p99 {q(0.99):.2f} max {late[-1] * 1000:.2f}, "
                f"CPU {cpu:.2f} s ({cpu / len(late) * 1e6:.1f} us per release)"
            )


if __name__ == "__main__":
    main()
