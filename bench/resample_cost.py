"""What resampling a call's audio costs, by soxr quality and chunk size, and what it does to it.

    python bench/resample_cost.py
    python bench/resample_cost.py --seconds 20 --repeat 7
    python bench/resample_cost.py --cold 8 --seconds 2   # as a live gateway calls it

For each direction a 16 kHz call needs (16 -> 24 kHz: the caller to the model; 24 -> 16 kHz:
the model to the caller), each soxr quality and each chunk size, one stream (`soxr.ResampleStream`,
as `gateway.audio.resample` uses it) resamples `--seconds` of speech-like audio fed in chunks of
that size. Prints the CPU time per 20 ms of audio (the median of `--repeat` runs, this process's
`time.process_time`), the filter's delay (where an impulse comes out), and how far the output is
from the very-high-quality one (signal-to-error ratio over the band both rates carry, up to
7 kHz: 60 dB and more is far below what a phone call's codecs and lines add).

`--cold MB`: between chunks, write MB megabytes of memory and sleep 1 ms, as a live gateway's
other calls and its idle core do between one call's frames; only the resampler calls are
timed. A live gateway's resampler calls cost what this prints, several times the tight loop's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import soxr

QUALITIES = ("LQ", "MQ", "HQ", "VHQ")
CHUNKS_MS = (20, 40, 60, 100, 200)
DIRECTIONS = ((16000, 24000), (24000, 16000))


def speech_like(rate: int, seconds: float, seed: int = 1) -> np.ndarray:
    """Harmonics of a gliding pitch under a moving formant, plus a little noise, band-limited
    to 7 kHz: enough like a voice to exercise the filter across the band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    out = np.zeros_like(t)
    for k in range(1, 50):
        f = k * pitch
        formant = np.exp(-(((f - 700 - 400 * np.sin(2 * np.pi * 0.3 * t)) / 900) ** 2))
        out += np.where(f < 7000, formant / k**0.5, 0.0) * np.sin(k * phase)
    spectrum = np.fft.rfft(rng.normal(0, 0.02, t.size))
    spectrum[np.fft.rfftfreq(t.size, 1 / rate) > 7000] = 0
    out += np.fft.irfft(spectrum, t.size)
    return (out / np.abs(out).max() * 12000).astype(np.int16)


def run_stream(
    src: int, dst: int, quality: str, audio: np.ndarray, chunk: int, cold_mb: float = 0
) -> tuple[float, np.ndarray]:
    stream = soxr.ResampleStream(src, dst, 1, dtype="int16", quality=quality)
    pieces = []
    if cold_mb:  # time each call alone; cool the caches (and the core) between calls
        other = np.zeros(int(cold_mb * 2**20), dtype=np.uint8)
        spent = 0.0
        for i in range(0, audio.size, chunk):
            other += 1
            time.sleep(0.001)
            started = time.process_time()
            pieces.append(stream.resample_chunk(audio[i : i + chunk]))
            spent += time.process_time() - started
        pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True))
        return spent, np.concatenate(pieces)
    started = time.process_time()
    for i in range(0, audio.size, chunk):
        pieces.append(stream.resample_chunk(audio[i : i + chunk]))
    pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True))
    return time.process_time() - started, np.concatenate(pieces)


def delay_ms(src: int, dst: int, quality: str) -> float:
    """How much input (ms) a stream needs after an impulse before the impulse's peak comes
    out, fed 1 ms at a time: the latency this resampler adds to a live stream."""
    impulse = np.zeros(src // 5, dtype=np.int16)
    impulse[0] = 30000
    stream = soxr.ResampleStream(src, dst, 1, dtype="int16", quality=quality)
    step = src // 1000
    for i in range(0, impulse.size, step):
        out = stream.resample_chunk(impulse[i : i + step])
        if out.size and np.abs(out).max() > 10000:
            return (i + step) * 1000 / src
    return float("nan")


def snr_db(reference: np.ndarray, other: np.ndarray, rate: int) -> float:
    n = min(reference.size, other.size)
    a, b = reference[:n].astype(float), other[:n].astype(float)
    keep = slice(rate // 10, n - rate // 10)  # not the edges
    err = a[keep] - b[keep]
    return float(10 * np.log10(np.sum(a[keep] ** 2) / max(np.sum(err**2), 1e-9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--cold", type=float, default=0, metavar="MB", help="memory written between chunks"
    )
    args = parser.parse_args()
    head = f"{'direction':>14} {'quality':>7} {'delay ms':>9} {'vs VHQ dB':>9}"
    print(head + "  us per 20 ms of audio, by chunk")
    print(f"{'':>14} {'':>7} {'':>9} {'':>9}  " + " ".join(f"{c:>7} ms" for c in CHUNKS_MS))
    for src, dst in DIRECTIONS:
        audio = speech_like(src, args.seconds)
        _, reference = run_stream(src, dst, "VHQ", audio, src // 50)
        frames = args.seconds * 50
        for quality in QUALITIES:
            costs = []
            output = reference
            for chunk_ms in CHUNKS_MS:
                chunk = src * chunk_ms // 1000
                runs = []
                for _ in range(args.repeat):
                    seconds, output = run_stream(src, dst, quality, audio, chunk, args.cold)
                    runs.append(seconds)
                costs.append(statistics.median(runs) / frames * 1e6)
            snr = snr_db(reference, output, dst)
            delay = delay_ms(src, dst, quality)
            print(
                f"{src // 1000:>5} -> {dst // 1000} kHz {quality:>7} {delay:>9.1f} {snr:>9.1f}  "
                + " ".join(f"{c:>10.2f}" for c in costs)
            )


if __name__ == "__main__":
    main()
