"""Operation figures: /metrics cost, RTMP/WHIP push CPU and glass-to-glass delay, TURN vs direct.

Every server runs as its own process (its CPU read from /proc); viewers, the
media servers' clients and the clocks are in this process. Glass-to-glass: the
server's `start` event (sent when the first voiced chunk is handed to the
transport, read over SSE) to the first loud audio frame decoded by a viewer
behind the media server; the same measure on a direct WebRTC peer is the floor.

    python -m bench.bench_ops --trials 8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import av
import numpy as np

from bench.common import ROOT, loopback_only, summary_ms
from bench_sessions import cpu_seconds

from tests.conftest import free_port
from tests.support.nginx_process import NginxProcess
from tests.support.rtc_client import ReceiverClient
from tests.support.worker_process import WorkerProcess
from tests.test_broadcast import rtmp_config
from tests.support.turn_server import Coturn
from tests.support.whip_server import TOKEN, WhipEndpoint

SPEECH = "Testing one two three."
LOUD_PEAK = 1000  # int16 peak of a frame that carries speech
PUSH_ID = "bench"


class StartEvents:
    """The session's `start` events over SSE, stamped on arrival in this process."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._task: asyncio.Task | None = None

    def follow(self, http: aiohttp.ClientSession, url: str, session_id: str) -> None:
        self._task = asyncio.create_task(self._read(http, url, session_id))

    async def _read(self, http, url: str, session_id: str) -> None:
        async with http.get(f"{url}/events", params={"sessionid": session_id},
                            timeout=aiohttp.ClientTimeout(total=None)) as stream:
            async for line in stream.content:
                if line.startswith(b"data:") and json.loads(line[5:]).get("type") == "start":
                    self.times.append(time.monotonic())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def speech_delays(http, url: str, session_id: str, loud_after, trials: int) -> list[float]:
    """Per trial: start event -> first loud audio at the viewer (`loud_after(t)` gives its arrival)."""
    events = StartEvents()
    events.follow(http, url, session_id)
    await asyncio.sleep(0.5)
    delays = []
    for _ in range(trials):
        count = len(events.times)
        await http.post(f"{url}/human", json={"sessionid": session_id, "text": SPEECH})
        deadline = time.monotonic() + 15
        while len(events.times) == count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if len(events.times) == count:
            continue
        started = events.times[-1]
        arrival = None
        while arrival is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            arrival = loud_after(started - 0.5)
        if arrival is not None:
            delays.append(arrival - started)
        await asyncio.sleep(2.5)  # the sentence ends; silence before the next trial
    events.stop()
    return delays


class RtmpViewer:
    """Pulls the stream from the media server in a thread; stamps loud audio frames."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loud: list[float] = []
        self.video_frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rtmp-viewer")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                container = av.open(self.url, options={"rtmp_live": "live", "fflags": "nobuffer"}, timeout=(15, 5))
                break
            except av.error.FFmpegError:
                time.sleep(0.3)
        else:
            return
        with container:
            for packet in container.demux():
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        self.video_frames += 1
                    elif np.abs(frame.to_ndarray()).max() * 32768 > LOUD_PEAK:
                        self.loud.append(time.monotonic())
                if self._stop.is_set():
                    return

    def loud_after(self, t: float) -> float | None:
        return next((x for x in self.loud if x > t), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def loud_in(client: ReceiverClient, t: float) -> float | None:
    for frame in client.audio:
        if frame.arrival > t and int(np.abs(frame.data.astype(np.int32)).max()) > LOUD_PEAK:
            return frame.arrival
    return None


async def cpu_share(worker: WorkerProcess, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(worker.proc.pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(worker.proc.pid) - cpu0) / (time.monotonic() - t0)


async def bench(args) -> dict[str, str]:
    loopback_only()
    results: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    base = ["--data-dir", str(ROOT / "data"), "--avatar_id", args.avatar, "--models-dir", str(tmp / "no-models")]
    async with aiohttp.ClientSession() as http:
        # idle worker: the baseline every per-session figure subtracts
        worker = await WorkerProcess(ROOT / "data", tmp / "idle.log", *base).start(http)
        idle = await cpu_share(worker, args.seconds)
        results["idle worker CPU (no session)"] = f"{idle * 100:.1f} %"

        # direct WebRTC: the floor of the glass-to-glass measure, and /metrics under load
        clients = []
        for _ in range(args.metric_sessions):
            client = ReceiverClient(worker.url, keep_video=False)
            await client.connect(http)
            clients.append(client)
        for client in clients:
            await client.wait_for(video_frames=10, timeout=30)
        delays = await speech_delays(http, worker.url, clients[0].sessionid, lambda t: loud_in(clients[0], t), args.trials)
        results["glass-to-glass, direct WebRTC (floor)"] = summary_ms(delays)
        busy = await cpu_share(worker, 3.0)
        results["WebRTC: one session in all (engine + VP8/Opus + aiortc), for comparison"] = (
            f"{(busy - idle) / args.metric_sessions * 100:.1f} % of a core ({args.metric_sessions} sessions)")
        timings = []
        cpu0 = cpu_seconds(worker.proc.pid)
        t0 = time.monotonic()
        for _ in range(args.scrapes):
            started = time.perf_counter()
            async with http.get(f"{worker.url}/metrics") as response:
                await response.read()
            timings.append(time.perf_counter() - started)
        elapsed = time.monotonic() - t0
        per_scrape = ((cpu_seconds(worker.proc.pid) - cpu0) - busy * elapsed) / args.scrapes
        results[f"/metrics scrape with {args.metric_sessions} live sessions"] = (
            f"{summary_ms(timings)}; server CPU {per_scrape * 1000:.2f} ms per scrape")
        for client in clients:
            await client.close()
        worker.signal()
        await worker.wait_exit(40)

        # RTMP through Debian's nginx-rtmp
        port = free_port()
        nginx = NginxProcess(tmp / "rtmp", rtmp_config(tmp / "rtmp", port)).start(port)
        rtmp_url = f"rtmp://127.0.0.1:{port}/live/avatar"
        worker = await WorkerProcess(ROOT / "data", tmp / "rtmp.log", *base, "--transport", "rtmp",
                                     "--push-url", rtmp_url, "--push-session-id", PUSH_ID).start(http)
        viewer = RtmpViewer(rtmp_url)
        await asyncio.sleep(3)
        share = await cpu_share(worker, args.seconds)
        results["RTMP: one pushed session in all (engine + H.264/AAC encode + mux)"] = f"{(share - idle) * 100:.1f} % of a core"
        delays = await speech_delays(http, worker.url, PUSH_ID, viewer.loud_after, args.trials)
        results["glass-to-glass via nginx-rtmp (PyAV viewer)"] = summary_ms(delays)
        viewer.stop()
        worker.signal()
        await worker.wait_exit(40)
        nginx.stop()

        # WHIP to an aiortc endpoint
        endpoint = WhipEndpoint()
        await endpoint.start()
        worker = await WorkerProcess(ROOT / "data", tmp / "whip.log", *base, "--transport", "whip", "--push-url",
                                     endpoint.url, "--push-token", TOKEN, "--push-session-id", PUSH_ID).start(http)
        await asyncio.sleep(3)
        share = await cpu_share(worker, args.seconds)
        results["WHIP: one pushed session in all (engine + VP8/Opus + aiortc)"] = f"{(share - idle) * 100:.1f} % of a core"

        def whip_loud(t: float) -> float | None:
            for publication in endpoint.live():
                for arrival, peak in zip(publication.audio_arrivals, publication.audio_peaks):
                    if arrival > t and peak > LOUD_PEAK:
                        return arrival
            return None

        delays = await speech_delays(http, worker.url, PUSH_ID, whip_loud, args.trials)
        results["glass-to-glass via the WHIP endpoint"] = summary_ms(delays)
        worker.signal()
        await worker.wait_exit(40)
        await endpoint.close()

        # TURN: the listener offers only relay candidates, so media crosses coturn
        turn = Coturn(tmp / "turn").start()
        worker = await WorkerProcess(ROOT / "data", tmp / "turn.log", *base, "--ice-server", turn.url).start(http)
        for relay in (False, True):
            client = await relay_client(http, worker.url, turn.url if relay else None)
            await client.wait_for(video_frames=10, timeout=30)
            delays = await speech_delays(http, worker.url, client.sessionid, lambda t: loud_in(client, t), args.trials)
            results[f"glass-to-glass, WebRTC {'relayed by coturn' if relay else 'direct'} (same run)"] = summary_ms(delays)
            await client.close()
        worker.signal()
        await worker.wait_exit(40)
        turn.stop()
    return results


async def relay_client(http, url: str, turn_url: str | None) -> ReceiverClient:
    """A listener whose offer carries only relay candidates when `turn_url` is given."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from server.offer import parse_ice_server

    servers = [parse_ice_server(turn_url)] if turn_url else []
    client = ReceiverClient(url, keep_video=False, pc=RTCPeerConnection(RTCConfiguration(iceServers=servers)))
    client.pc.addTransceiver("video", direction="recvonly")
    client.pc.addTransceiver("audio", direction="recvonly")

    @client.pc.on("track")
    def on_track(track) -> None:
        client._tasks.append(asyncio.ensure_future(client._consume(track)))

    await client.pc.setLocalDescription(await client.pc.createOffer())
    sdp = client.pc.localDescription.sdp
    if turn_url:
        sdp = "\r\n".join(line for line in sdp.split("\r\n")
                           if not line.startswith("a=candidate:") or " typ relay" in line)
    async with http.post(f"{url}/offer", json={"sdp": sdp, "type": "offer"}) as response:
        answer = await response.json()
    client.sessionid = answer["sessionid"]
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--metric-sessions", dest="metric_sessions", type=int, default=4)
    parser.add_argument("--avatar", default="default")
    args = parser.parse_args()
    for what, figure in asyncio.run(bench(args)).items():
        print(f"| {what} | {figure} |")


if __name__ == "__main__":
    main()
