"""Load benchmark: N simulated real-time ACS calls against a gateway in its own process.

    python bench/echo_load.py --calls 250 --duration 20
    python bench/echo_load.py --sweep 100,150,200,250,300 --duration 15

The gateway runs `python -m gateway serve` (echo), pinned to one core (`--server-cpu`); this load
generator pins itself to the other (`--client-cpu`). The generator is built not to be the
bottleneck: one thread, epoll, pre-built masked frames, and one shared 20 ms ticker on absolute
deadlines for all calls. Each frame's PCM starts with (call, sequence) so its echo is matched.

Prints per load: calls, p50/p99/max echo round trip (of the frames sent in the measured window:
an echo of a frame sent before it is not timed), frames lost (sent in the window, never
echoed within the second after it) and out of order, server CPU (% of a core and microseconds
per echoed frame), server RSS per call, and the generator's own CPU and ticker lateness (so a
run where the generator fell behind is visible). Also a `RESULT {json}` line per load.

`--busy-core` runs a spinning process at the idle scheduling class (`SCHED_IDLE`) on the
gateway's core: it gets the core only when the gateway does not want it, so the core never
goes idle. Comparing runs with and without it separates the gateway's own work per frame from
what it costs the machine to wake an idle core for each frame at low load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# This tree's gateway, not what the virtualenv has installed (it may be another checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the simulator's client side: frames and packets
from gateway.acs import client as wire  # noqa: E402

FRAME_S = 0.020  # ACS sends one frame every 20 ms
RING = 50  # distinct frames per call (1 s); an echo later than 1 s would be mis-matched
RAMP_PER_TICK = 4  # connections opened per 20 ms tick while ramping (200/s)
# After the measured window the calls go on talking this long, uncounted: a server that sends
# audio on in batches (a bridge's 40 ms upstream events) holds a window's last frame until the
# next one comes, and must not have it counted as lost.
FLUSH_S = 0.1
MASK = b"\x5a\x13\xc7\x2e"  # client frames must be masked; the server unmasks either way
HEADER = struct.Struct("!HI")  # call index, sequence: the first 6 bytes of each frame's PCM
ROOT = Path(__file__).resolve().parent.parent


def masked_text_frame(text: str) -> bytes:
    return wire.masked_text(text, MASK)


def audio_frames(call: int, rate: int) -> list[bytes]:
    size = rate * 2 // 50
    frames = []
    for seq in range(RING):
        pcm = HEADER.pack(call, seq) + bytes((call + seq + i) & 0xFF for i in range(size - 6))
        frames.append(masked_text_frame(wire.audio_text(pcm, None, silent=False)))
    return frames


def metadata_frame(rate: int) -> bytes:
    return masked_text_frame(wire.metadata_text(rate))


class Call:
    __slots__ = (
        "index",
        "sock",
        "frames",
        "sent_at",
        "inbox",
        "echoed",
        "last_seq",
        "reorder",
        "upgraded",
        "closed",
        "counted",
    )

    def __init__(self, index: int, sock: socket.socket, frames: list[bytes]) -> None:
        self.index = index
        self.sock = sock
        self.frames = frames
        self.sent_at = [0.0] * RING
        self.inbox = bytearray()
        self.echoed = 0
        self.last_seq = -1
        self.reorder = 0
        self.upgraded = False
        self.closed = False
        self.counted = bytearray(RING)  # 1: the frame in this slot was sent in the window


def upgrade_request(host: str, port: int, index: int) -> bytes:
    headers = wire.acs_headers(f"bench-{index}", f"bench-corr-{index}")
    return wire.upgrade_request(f"{host}:{port}", "/bench", headers)[0]


DATA_MARK = b'"data":"'


class Generator:
    def __init__(
        self, url: str, calls: int, rate: int, phases: int = 20, flush_s: float = FLUSH_S
    ) -> None:
        host, port = url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.n = calls
        self.rate = rate
        self.sel = selectors.EpollSelector()
        self.calls: list[Call] = []
        self.rtts: list[float] = []
        self.measuring = False
        self.sent = 0
        self.errors = 0
        self.lateness: list[float] = []
        # Real calls start at independent times, so their frames are spread over the 20 ms
        # period: call i sends in sub-tick i % phases. phases=1 sends every call's frame in one
        # burst (the worst case for round-trip percentiles).
        self.phases = phases
        self.flush_s = flush_s  # the calls talk on, uncounted, this long after the window

    def open_call(self, index: int) -> None:
        sock = socket.create_connection((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(upgrade_request(self.host, self.port, index))
        call = Call(index, sock, self.frames_for(index))
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, call)
        self.calls.append(call)

    def frames_for(self, index: int) -> list[bytes]:
        """The call's RING pre-built masked frames (a subclass may send another signal)."""
        return audio_frames(index, self.rate)

    def seq_of(self, buf: bytearray, at: int) -> int:
        """The sequence number of the echoed frame whose base64 audio starts at `buf[at]`."""
        tag = base64.b64decode(bytes(buf[at : at + 8]))
        return int(HEADER.unpack(tag)[1])

    def sending(self, call: Call, slot: int) -> None:
        """Frame `slot` of the call is about to be sent (a subclass may track it)."""

    def on_echo(self, call: Call, buf: bytearray, at: int, now: float) -> None:
        """One returned audio packet whose base64 starts at `buf[at]`: time its round trip."""
        seq = self.seq_of(buf, at)
        slot = seq % RING
        if seq < call.last_seq and call.last_seq - seq < RING // 2:
            call.reorder += 1
        call.last_seq = seq
        call.echoed += 1
        if call.counted[slot]:
            call.counted[slot] = 0
            self.rtts.append(now - call.sent_at[slot])

    def on_readable(self, call: Call, now: float) -> None:
        try:
            data = call.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.errors += 1
            call.closed = True
            self.sel.unregister(call.sock)
            return
        buf = call.inbox
        buf += data
        if not call.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"upgrade refused: {bytes(buf[:60])!r}")
            del buf[: end + 4]
            call.upgraded = True
            call.sock.send(metadata_frame(self.rate))
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                raise SystemExit("unexpected 64-bit frame")
            if end - pos < head + n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x8:
                self.errors += 1
                call.closed = True
            elif opcode == 0x1:
                at = buf.find(DATA_MARK, pos + head, pos + head + n)
                if at >= 0:
                    self.on_echo(call, buf, at + 8, now)
            pos += head + n
        del buf[:pos]

    def run(self, warmup: float, duration: float) -> dict[str, float]:
        start = time.monotonic()
        tick = 0
        opened = 0
        seq = 0
        measure_start = measure_end = None
        client_cpu0 = 0.0
        window_echoed0 = 0
        stop_at = None
        sub_s = FRAME_S / self.phases
        while True:
            deadline = start + tick * sub_s
            phase = tick % self.phases
            now = time.monotonic()
            while now < deadline:
                for key, _ in self.sel.select(deadline - now):
                    self.on_readable(key.data, time.monotonic())
                now = time.monotonic()
            late = now - deadline
            if self.measuring:
                self.lateness.append(late)
            if opened < self.n:
                for _ in range(min(RAMP_PER_TICK, self.n - opened) if phase == 0 else 0):
                    self.open_call(opened)
                    opened += 1
                if opened == self.n:
                    all_up = now
            elif stop_at is None:
                if measure_start is None and now >= all_up + warmup:
                    measure_start = now
                    self.measuring = True
                    t = os.times()
                    client_cpu0 = t.user + t.system
                    window_echoed0 = sum(c.echoed for c in self.calls)
                    self.server_start()
                if measure_start is not None and now >= measure_start + duration:
                    measure_end = now
                    stop_at = now + 1.0 + self.flush_s
                    t = os.times()
                    client_cpu = t.user + t.system - client_cpu0
                    self.server_stop()
            if stop_at is None or now < measure_end + self.flush_s:
                slot = seq % RING
                counted = self.measuring and stop_at is None
                for call in self.calls[phase :: self.phases]:
                    if call.upgraded and not call.closed:
                        call.sent_at[slot] = now
                        call.counted[slot] = counted
                        self.sending(call, slot)
                        try:
                            call.sock.send(call.frames[slot])
                        except (BlockingIOError, OSError):
                            self.errors += 1
                        if counted:
                            self.sent += 1
                if phase == self.phases - 1 and opened == self.n and self.all_up():
                    seq += 1
            elif now >= stop_at:
                break
            tick += 1
        self.measuring = False
        echoed = sum(c.echoed for c in self.calls) - window_echoed0
        rtts = sorted(self.rtts)
        lateness = sorted(self.lateness)

        def pct(values: list[float], p: float) -> float:
            return (
                values[min(len(values) - 1, int(p * len(values)))] * 1000
                if values
                else float("nan")
            )

        window = measure_end - measure_start
        return {
            "calls": self.n,
            "window_s": round(window, 2),
            "frames_sent": self.sent,
            "frames_echoed": len(rtts),
            "frames_lost": max(0, self.sent - len(rtts)),
            "out_of_order": sum(c.reorder for c in self.calls),
            "rtt_p50_ms": round(pct(rtts, 0.50), 2),
            "rtt_p90_ms": round(pct(rtts, 0.90), 2),
            "rtt_p99_ms": round(pct(rtts, 0.99), 2),
            "rtt_max_ms": round(rtts[-1] * 1000, 2) if rtts else float("nan"),
            "client_cpu_pct": round(100 * client_cpu / window, 1),
            "ticker_late_p99_ms": round(pct(lateness, 0.99), 2),
            "errors": self.errors,
            "_echoed_all": echoed,
        }

    def all_up(self) -> bool:
        if not self._all_up:
            self._all_up = all(c.upgraded for c in self.calls)
        return self._all_up

    _all_up = False

    # server CPU is read by the caller through these hooks
    def server_start(self) -> None: ...
    def server_stop(self) -> None: ...

    def close(self) -> None:
        for call in self.calls:
            try:
                call.sock.setblocking(True)
                call.sock.send(masked_close())
            except OSError:
                pass
            call.sock.close()


def masked_close() -> bytes:
    return wire.masked_close(1000, MASK)


def model_tls(ca_path: str) -> ssl.SSLContext:
    """A server-side TLS context for a fake model, from a throwaway CA whose certificate is
    written to `ca_path`. The servers under test trust it as they would a real CA: started with
    `SSL_CERT_FILE=ca_path`, which `ssl.create_default_context()` reads."""
    import trustme  # the `test` extra

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(ca_path)
    return context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lateness_p99_ms(port: int) -> tuple[float, int]:
    """The upper bound of the bucket holding the 99th percentile of pacing lateness, and how
    many paced releases it was measured on."""
    return histogram_bound_ms(port, "pacing_lateness_seconds")


def histogram_buckets(port: int, histogram: str) -> dict[float, float]:
    """The gateway's histogram `acs_gateway_<histogram>`, all labels together: the cumulative
    count of each bucket, by its upper bound in seconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"acs_gateway_{histogram}_bucket"):
            le = float(line.split('le="')[1].split('"')[0])
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_bound_ms(port: int, histogram: str, quantile: float = 0.99) -> tuple[float, int]:
    """The upper bound (ms) of the bucket of the gateway's histogram `acs_gateway_<histogram>`
    that holds its `quantile`, all labels together, and how many observations it has."""
    buckets = histogram_buckets(port, histogram)
    total = int(buckets[max(buckets)]) if buckets else 0
    if not total:
        return 0.0, 0
    for bound, count in sorted(buckets.items()):
        if count >= quantile * total:
            return bound * 1000, total
    return float("inf"), total


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_server(
    cpu: int | None, extra: list[str], root: Path = ROOT
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m gateway serve` from the source tree `root` (another checkout: A/B runs)."""
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "info",
        "--max-calls",
        "100000",
        *extra,
    ]
    return start_process(cmd, cpu, root)


def start_process(
    cmd: list[str], cpu: int | None, root: Path = ROOT, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server that says `listening on ws://...` on stderr; returns it and that URL."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        found = re.search(r"listening on (wss?://\S+)", line)
        if found:
            # keep draining so the server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


@contextmanager
def core_kept_busy(cpu: int | None) -> Iterator[None]:
    """While the block runs, a process spins on `cpu` at the idle scheduling class: it runs
    only when nothing else there wants to, so the core never idles. None: nothing."""
    if cpu is None:
        yield
        return
    spin = (
        "import os\n"
        f"os.sched_setaffinity(0, {{{cpu}}})\n"
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        "while True:\n    pass\n"
    )
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM (a clean stop: the gateway drains and flushes), then a kill after `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def one_load(args: argparse.Namespace, calls: int) -> dict[str, float]:
    proc, url = (
        (None, args.url)
        if args.url
        else start_server(args.server_cpu, args.server_arg, Path(args.gateway_root or ROOT))
    )
    try:
        gen = Generator(url, calls, args.rate, args.phases)
        marks: dict[str, float] = {}
        if proc is not None:
            rss_idle = proc_rss_kb(proc.pid)
            gen.server_start = lambda: marks.update(
                cpu0=proc_cpu_seconds(proc.pid),  # type: ignore[method-assign]
                rss=proc_rss_kb(proc.pid),
            )
            gen.server_stop = lambda: marks.update(cpu1=proc_cpu_seconds(proc.pid))  # type: ignore[method-assign]
        result = gen.run(args.warmup, args.duration)
        gen.close()
        if proc is not None:
            cpu = marks["cpu1"] - marks["cpu0"]
            result["server_cpu_pct"] = round(100 * cpu / result["window_s"], 1)
            result["server_us_per_frame"] = round(cpu / max(1, result["frames_echoed"]) * 1e6, 1)
            result["server_rss_idle_mb"] = round(rss_idle / 1024, 1)
            result["server_rss_per_call_kb"] = round((marks["rss"] - rss_idle) / calls, 1)
        del result["_echoed_all"]
        return result
    finally:
        if proc is not None:
            stop_process(proc)


COLUMNS = [
    ("calls", "calls"),
    ("rtt_p50_ms", "p50 ms"),
    ("rtt_p99_ms", "p99 ms"),
    ("rtt_max_ms", "max ms"),
    ("frames_lost", "lost"),
    ("out_of_order", "reord"),
    ("server_cpu_pct", "srv cpu%"),
    ("server_us_per_frame", "us/frame"),
    ("server_rss_per_call_kb", "KB/call"),
    ("client_cpu_pct", "gen cpu%"),
    ("ticker_late_p99_ms", "tick p99 ms"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sweep", help="comma-separated call counts, one fresh server each")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after ramp-up")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument(
        "--phases",
        type=int,
        default=20,
        help="spread calls over this many sub-ticks of 20 ms (1: one burst)",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--url", help="an already running gateway (no server CPU then)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument(
        "--gateway-root", help="serve the gateway from this source tree (default: this one)"
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep the gateway's core from idling with a SCHED_IDLE spinner",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    loads = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.calls]
    with core_kept_busy(args.server_cpu if args.busy_core else None):
        print(" ".join(f"{title:>11}" for _, title in COLUMNS))
        for calls in loads:
            r = one_load(args, calls)
            print(" ".join(f"{r.get(key, float('nan')):>11}" for key, _ in COLUMNS), flush=True)
            print("RESULT " + json.dumps(r), file=sys.stderr, flush=True)
            if r["client_cpu_pct"] > 80 or r["ticker_late_p99_ms"] > 5:
                print(
                    f"WARNING: the load generator may be the bottleneck at {calls} calls "
                    f"(cpu {r['client_cpu_pct']}%, ticker p99 late {r['ticker_late_p99_ms']} ms)"
                )


if __name__ == "__main__":
    main()
