"""Costs of the LiveTalking-parity features: crossfade per frame, and recording a session.

    python -m bench.bench_parity crossfade             # per-frame costs, in this process
    python -m bench.bench_parity record --sessions 1 4 --seconds 10

`record` runs the server as its own process (its CPU measured from /proc, as in
bench_sessions.py) with N idle sessions received by loopback listeners, first
without and then with every session recording to MP4 (POST /record).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import aiohttp
import numpy as np

from bench.common import ROOT, loopback_only

from bench_sessions import cpu_seconds
from tests.support.server_process import wait_up
from tests.conftest import free_port
from tests.support.rtc_client import ReceiverClient


def median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def crossfade(args) -> None:
    from basereal import to_video_frame
    from media import CHUNK_SAMPLES
    from scene import Clip, Layer, Scene, fit_frame

    rng = np.random.default_rng(0)
    print("| frame size | BGR → yuv420p VideoFrame (every frame, for scale) | crossfade blend | opaque clip frame | "
          "scale+letterbox (set_avatar 4:3 → square) | scene bookkeeping |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        composed = rng.integers(0, 255, (size, size, 3), np.uint8)
        clip_image = rng.integers(0, 255, (size, size, 3), np.uint8)
        other = rng.integers(0, 255, (size * 3 // 4, size, 3), np.uint8)
        base = median_us(lambda: to_video_frame(composed), args.repeat)
        fade = median_us(lambda: Layer(clip_image, 0.4).over(composed), args.repeat)
        opaque = median_us(lambda: Layer(clip_image).over(composed), args.repeat)
        scale = median_us(lambda: fit_frame(other, (size, size)), args.repeat)
        clip = Clip("bench", tuple(clip_image for _ in range(25)), np.zeros(25 * 2 * CHUNK_SAMPLES, np.float32))
        scene = Scene((size, size), 2, fade_frames=5)
        scene.configure({2: clip}, 5)

        def step() -> None:
            if not scene.playing:
                scene.play(2)
            scene.clip_frame(False)
            scene.layer(False, lambda: composed)

        book = median_us(step, args.repeat)
        print(f"| {size}×{size} | {base:.0f} µs | {fade:.0f} µs | {opaque:.1f} µs | {scale:.0f} µs | {book:.1f} µs |")


async def measure(url: str, pid: int, http, clients: list[ReceiverClient], seconds: float) -> tuple[float, float, float]:
    """(server CPU %, median delivered fps, min fps) over `seconds`."""
    marks = [len(c.video) for c in clients]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    fps = [len([f for f in c.video[m:] if f.arrival <= t1]) / (t1 - t0) for c, m in zip(clients, marks)]
    return 100 * (cpu1 - cpu0) / (t1 - t0), float(np.median(fps)), min(fps)


async def record_run(args) -> None:
    loopback_only()
    port = free_port()
    command = [sys.executable, str(ROOT / "app.py"), "--listenport", str(port), "--ice-host", "127.0.0.1",
               "--max_session", "16", "--tts", "espeak", "--model", "lite", "--avatar_id", args.avatar,
               "--log-level", "WARNING"]
    server = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    print("| sessions | recording | server CPU | CPU per session | delivered fps (median, min) | recorded frames/s |")
    print("|---|---|---|---|---|---|")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_up(url, http)
            for count in args.sessions:
                clients = [ReceiverClient(url, keep_video=False) for _ in range(count)]
                for client in clients:
                    await client.connect(http)
                for client in clients:
                    await client.wait_for(video_frames=10, timeout=30)
                await asyncio.sleep(2.0)
                cpu, fps, fps_min = await measure(url, server.pid, http, clients, args.seconds)
                print(f"| {count} | off | {cpu:.0f} % | {cpu / count:.1f} % | {fps:.1f} (min {fps_min:.1f}) | – |", flush=True)
                started = time.monotonic()
                for client in clients:
                    await http.post(f"{url}/record", json={"sessionid": client.sessionid, "type": "start_record"})
                await asyncio.sleep(1.0)
                cpu, fps, fps_min = await measure(url, server.pid, http, clients, args.seconds)
                frames = []
                for client in clients:
                    async with http.post(f"{url}/record", json={"sessionid": client.sessionid, "type": "end_record"}) as r:
                        frames.append((await r.json())["data"]["frames"])
                recorded = [n / (time.monotonic() - started) for n in frames]  # a lower bound: end_record waits
                print(f"| {count} | on | {cpu:.0f} % | {cpu / count:.1f} % | {fps:.1f} (min {fps_min:.1f}) | "
                      f"{np.median(recorded):.1f} |", flush=True)
                for client in clients:
                    await client.close()
                await asyncio.sleep(1.5)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    fade = sub.add_parser("crossfade")
    fade.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    fade.add_argument("--repeat", type=int, default=300)
    record = sub.add_parser("record")
    record.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    record.add_argument("--seconds", type=float, default=10.0)
    record.add_argument("--avatar", default="default")
    args = parser.parse_args()
    if args.what == "crossfade":
        crossfade(args)
    else:
        asyncio.run(record_run(args))


if __name__ == "__main__":
    main()
