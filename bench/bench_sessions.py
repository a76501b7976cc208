"""Idle (or speaking) sessions received by loopback clients: server CPU and delivered pacing.

The server runs as its own process (so its CPU is measured alone, VP8/Opus
encoding included); N aiortc clients in this process receive the streams.

    python -m bench.bench_sessions --sessions 1 2 4 8 --seconds 10 [--speak] [--tts piper]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import numpy as np

from bench.common import ROOT, loopback_only, percentile

from tests.conftest import free_port
from tests.support.rtc_client import ReceiverClient
from tests.support.server_process import wait_up

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
SPEECH = "I am talking so that the benchmark measures a speaking session, and I keep going for a while. " * 3


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


async def measure(url: str, pid: int, http, count: int, seconds: float, speak: bool) -> dict:
    clients = [ReceiverClient(url, keep_video=False) for _ in range(count)]
    for client in clients:
        await client.connect(http)
    for client in clients:
        await client.wait_for(video_frames=10, timeout=30)
    if speak:
        for client in clients:
            await http.post(f"{url}/human", json={"sessionid": client.sessionid, "text": SPEECH, "type": "echo"})
    await asyncio.sleep(2.0)  # warm-up
    marks = [len(c.video) for c in clients]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    fps, intervals = [], []
    for client, mark in zip(clients, marks):
        frames = [f for f in client.video[mark:] if f.arrival <= t1]
        fps.append(len(frames) / (t1 - t0))
        intervals.extend(np.diff([f.arrival for f in frames]).tolist())
    for client in clients:
        await client.close()
    await asyncio.sleep(1.5)
    cpu_percent = 100 * (cpu1 - cpu0) / (t1 - t0)
    jitter = [abs(i - 0.04) for i in intervals]
    return {"sessions": count, "cpu_total": cpu_percent, "cpu_per_session": cpu_percent / count,
            "fps_min": min(fps), "fps_median": float(np.median(fps)),
            "jitter_p50_ms": percentile(jitter, 50) * 1000, "jitter_p99_ms": percentile(jitter, 99) * 1000}


async def run(args) -> list[dict]:
    loopback_only()
    port = free_port()
    command = [sys.executable, str(ROOT / "app.py"), "--listenport", str(port), "--ice-host", "127.0.0.1",
               "--max_session", "16", "--tts", args.tts, "--model", args.model, "--avatar_id", args.avatar,
               "--log-level", "WARNING"]
    server = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        async with aiohttp.ClientSession() as http:
            await wait_up(url, http)
            for count in args.sessions:
                rows.append(await measure(url, server.pid, http, count, args.seconds, args.speak))
                print(format_row(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    return rows


def format_row(row: dict) -> str:
    return (f"| {row['sessions']} | {row['cpu_total']:.0f} % | {row['cpu_per_session']:.1f} % | "
            f"{row['fps_median']:.1f} (min {row['fps_min']:.1f}) | {row['jitter_p50_ms']:.1f} ms | {row['jitter_p99_ms']:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--model", default="lite")
    parser.add_argument("--speak", action="store_true", help="every session speaks during the measurement")
    parser.add_argument("--tts", default="espeak", choices=["espeak", "piper"], help="the server's TTS")
    args = parser.parse_args()
    print(f"engine {args.model}, avatar {args.avatar}, {'speaking' if args.speak else 'idle'} ({args.tts}), {args.seconds:.0f} s each")
    print("| sessions | server CPU | CPU per session | delivered fps (median, min) | interval jitter p50 | p99 |")
    print("|---|---|---|---|---|---|")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
