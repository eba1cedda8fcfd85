"""How many real-time calls `acs-media-gateway simulate` sustains, against a server that only reads.

    python bench/simulator_capacity.py --calls 200 --duration 20
    python bench/simulator_capacity.py --sweep 200,500 --processes 1,2 --duration 20

The server (started here, in its own process, optionally pinned with `--server-cpu`) accepts
WebSocket upgrades, walks the frame headers of what it receives without parsing the payloads,
answers a close frame, and does nothing else: whatever falls behind in these runs is the
simulator, not the gateway. The simulator runs as users run it, `python -m gateway simulate URL
--json`, and this prints its own numbers: frames sent, errors, its CPU per process (% of a
core), and how late its frames left against their 20 ms deadlines (p50, p99, max). The
simulator keeps up when every call connected, nothing failed, and the p99 lateness is at most
2 ms ("behind" says which limit it crossed). Also a `RESULT {json}` line per run on stderr.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

from echo_load import proc_cpu_seconds  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_REPLY = bytes((0x88, 0x02, 0x03, 0xE8))  # close 1000, unmasked (server to client)


class Reader:
    """One connection: the upgrade, then frame headers skipped over; payloads never copied."""

    __slots__ = ("sock", "head", "upgraded", "skip", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""
        self.upgraded = False
        self.skip = 0  # payload bytes of the current frame still to come
        self.pending = b""  # an incomplete frame header

    def feed(self, data: bytes) -> bool:
        """False when the connection is done (close frame answered)."""
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return True
            key = b""
            for line in self.head[:end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
            data = self.head[end + 4 :]
            self.head = b""
        view = memoryview(self.pending + data) if self.pending else memoryview(data)
        self.pending = b""
        pos, end = 0, len(view)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            if end - pos < 2:
                break
            opcode, n = view[pos] & 0x0F, view[pos + 1] & 0x7F
            header = 2 + (2 if n == 126 else 8 if n == 127 else 0) + 4  # client frames: masked
            if end - pos < header:
                break
            if n == 126:
                n = int.from_bytes(view[pos + 2 : pos + 4], "big")
            elif n == 127:
                n = int.from_bytes(view[pos + 2 : pos + 10], "big")
            if opcode == 0x8:
                self.sock.sendall(CLOSE_REPLY)
                return False
            pos += header
            self.skip = n
        self.pending = bytes(view[pos:])
        return True


def serve_read_only(port_file: str) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    sel = selectors.EpollSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ, Reader(sock))
                continue
            reader: Reader = key.data
            try:
                data = reader.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or not reader.feed(data):
                sel.unregister(reader.sock)
                reader.sock.close()


def one_run(args: argparse.Namespace, calls: int, processes: int) -> dict[str, object]:
    port_file = f"/tmp/simulator-capacity-{os.getpid()}.port"
    Path(port_file).unlink(missing_ok=True)
    server_cmd = [sys.executable, __file__, "--serve", port_file]
    if args.server_cpu is not None:
        server_cmd = ["taskset", "-c", str(args.server_cpu), *server_cmd]
    server = subprocess.Popen(server_cmd)
    try:
        while not Path(port_file).exists() or not Path(port_file).read_text():
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{Path(port_file).read_text()}/"
        command = [
            sys.executable, "-m", "gateway", "simulate", url, "--json", "--quiet",
            "--calls", str(calls), "--duration", str(args.duration), "--ramp", str(args.ramp),
            "--processes", str(processes), "--rate", str(args.rate),
        ]  # fmt: skip
        cpu0, t0 = proc_cpu_seconds(server.pid), time.monotonic()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
        server_cpu = proc_cpu_seconds(server.pid) - cpu0
        wall = time.monotonic() - t0
    finally:
        server.kill()
        server.wait()
        Path(port_file).unlink(missing_ok=True)
    if not done.stdout:
        raise SystemExit(f"simulate failed: {done.stderr.decode()[-2000:]}")
    report = json.loads(done.stdout)
    t = report["totals"]
    return {
        "calls": calls,
        "processes": processes,
        "connected": t["calls_connected"],
        "frames_sent": t["frames_sent"],
        "errors": t["errors"],
        "sim_cpu_pct": t["simulator_cpu_pct"],
        "sim_cpu_per_process": t["simulator_cpu_pct_per_process"],
        "late_p50_ms": t["send_late_p50_ms"],
        "late_p99_ms": t["send_late_p99_ms"],
        "late_max_ms": t["send_late_max_ms"],
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "behind": report["simulator"]["fell_behind"],
        "failed": report.get("failed", []),  # the run's failed checks (none against a sink)
        "command": " ".join(command[1:]),
    }


COLUMNS = [
    ("calls", "calls"),
    ("processes", "procs"),
    ("connected", "up"),
    ("frames_sent", "frames"),
    ("errors", "errors"),
    ("sim_cpu_per_process", "sim cpu% (per proc)"),
    ("late_p50_ms", "late p50"),
    ("late_p99_ms", "late p99"),
    ("late_max_ms", "late max"),
    ("server_cpu_pct", "sink cpu%"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--sweep", help="comma-separated call counts")
    parser.add_argument("--processes", default="1", help="comma-separated worker counts")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 24000))
    parser.add_argument("--server-cpu", type=int, help="pin the read-only server to this core")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_read_only(args.serve)
        return
    loads = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.calls]
    workers = [int(x) for x in args.processes.split(",")]
    print("  ".join(f"{title:>9}" for _, title in COLUMNS), "  behind")
    for calls in loads:
        for processes in workers:
            r = one_run(args, calls, processes)
            cells = []
            for key, _ in COLUMNS:
                value = r[key]
                if isinstance(value, list):
                    value = "+".join(str(v) for v in value)
                cells.append(f"{value!s:>9}")
            print("  ".join(cells), " ", "; ".join(r["behind"]) or "no", flush=True)  # type: ignore[arg-type]
            print("RESULT " + json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
