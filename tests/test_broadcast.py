"""--transport rtmp|whip: one session pushed to a media server (nginx-rtmp pulled back with PyAV; a WHIP endpoint)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import av
import numpy as np
import pytest

from tests.support.binaries import require_file
from tests.conftest import PHOTO_AVATAR_ID, free_port, server_args, start_server
from tests.support.nginx_process import NginxProcess
from tests.support.speech_helpers import post

RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
PUSH_ID = "stage"
VOICED_RMS = 300.0
THUMB = 64
SYNC_TOLERANCE_S = 0.15  # about two video frames
IDLE_NOISE_FACTOR = 1.5
VOICED_PEAK = 300  # int16 peak of a received 20 ms frame with speech in it


def rtmp_config(prefix, port: int) -> str:
    module = require_file(RTMP_MODULE, "libnginx-mod-rtmp")
    return (f"load_module {module};\nuser root;\ndaemon off;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\nevents {{ worker_connections 64; }}\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; record off; }} }} }}\n")


@dataclass
class Pulled:
    """What a viewer received: (pts seconds, wall arrival) per frame, and audio loudness per frame."""

    video: list[tuple[float, float]] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)  # small grey picture per video frame
    audio: list[tuple[float, float, float]] = field(default_factory=list)  # (pts s, arrival, rms)
    error: str = ""


def pull(url: str, seconds: float, into: Pulled, stop: threading.Event) -> None:
    """A viewer: open the stream from the media server and decode for `seconds`."""
    deadline = time.monotonic() + 20
    while not stop.is_set():
        try:
            container = av.open(url, options={"rtmp_live": "live"}, timeout=(15, 5))
            break
        except av.error.FFmpegError as exc:  # the publisher may not be there yet
            into.error = str(exc)
            if time.monotonic() > deadline:
                return
            time.sleep(0.3)
    else:
        return
    until = time.monotonic() + seconds
    with container:
        for packet in container.demux():  # demux, not decode(streams): FLV may announce a stream late
            for frame in packet.decode():
                now = time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    into.video.append((float(frame.pts * frame.time_base), now))
                    into.thumbs.append(frame.reformat(width=THUMB, height=THUMB, format="gray").to_ndarray().astype(np.float32))
                else:
                    samples = frame.to_ndarray().astype(np.float32).reshape(-1) * 32768
                    into.audio.append((float(frame.pts * frame.time_base), now, float(np.sqrt(np.mean(samples ** 2)))))
            if time.monotonic() > until or stop.is_set():
                break


def speech_onsets(pulled: Pulled, posted: float) -> tuple[float, float]:
    """When the viewer first heard the speech, and when it first saw the mouth move (arrival times).

    A frame "moves" when it differs from every idle frame seen before the text was posted by more
    than the idle frames just before the post differ from them (x264 noise, loop positions).
    """
    arrivals = np.array([arrival for _, arrival in pulled.video])
    thumbs = np.array(pulled.thumbs)
    idle = thumbs[arrivals < posted - 1.0]

    def deviation(index: int) -> float:
        return float(np.min(np.abs(idle - thumbs[index]).mean(axis=(1, 2))))

    recent = np.where((arrivals >= posted - 1.0) & (arrivals < posted))[0]
    threshold = IDLE_NOISE_FACTOR * max(deviation(i) for i in recent)
    video = next((arrivals[i] for i in np.where(arrivals >= posted)[0] if deviation(i) > threshold), None)
    audio = next((arrival for _, arrival, rms in pulled.audio if arrival >= posted and rms > VOICED_RMS), None)
    assert video is not None and audio is not None, "the speech was not both seen and heard"
    return audio, float(video)


@pytest.fixture
async def rtmp_server(tmp_path):
    port = free_port()
    nginx = NginxProcess(tmp_path / "rtmp", rtmp_config(tmp_path / "rtmp", port)).start(port)
    yield f"rtmp://127.0.0.1:{port}/live/avatar"
    nginx.stop()


async def test_rtmp_push_is_watchable_in_sync_and_driven_by_its_fixed_id(data_dir, rtmp_server, http):
    server = await start_server(server_args(data_dir, "--avatar_id", PHOTO_AVATAR_ID, "--transport", "rtmp",
                                            "--push-url", rtmp_server, "--push-session-id", PUSH_ID))
    pulled, stop = Pulled(), threading.Event()
    viewer = threading.Thread(target=pull, args=(rtmp_server, 6.0, pulled, stop), name="viewer", daemon=True)
    try:
        viewer.start()
        deadline = time.monotonic() + 30
        while len(pulled.video) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert pulled.video, f"nothing pulled back: {pulled.error}"
        await asyncio.sleep(2.5)  # the whole idle loop passes before the speech
        posted = time.monotonic()
        status, body = await post(http, f"{server.url}/human", {"sessionid": PUSH_ID, "text": "Hello viewers, welcome."})
        assert status == 200, body
        await asyncio.sleep(1.0)
        status, _ = await post(http, f"{server.url}/interrupt_talk", {"sessionid": PUSH_ID})
        assert status == 200
        await asyncio.get_running_loop().run_in_executor(None, viewer.join, 30)
    finally:
        stop.set()
        await server.runner.cleanup()
    assert len(pulled.video) >= 50 and len(pulled.audio) >= 50, (len(pulled.video), len(pulled.audio))
    steps = np.diff([pts for pts, _ in pulled.video])
    assert abs(float(np.median(steps)) - 0.040) < 0.002, steps  # 25 fps in the stream's own timestamps
    wall = pulled.video[-1][1] - pulled.video[len(pulled.video) // 2][1]
    media = pulled.video[-1][0] - pulled.video[len(pulled.video) // 2][0]
    assert abs(media - wall) < 1.0, (media, wall)  # delivered in real time, not in bursts or slow motion
    # Interleaved: at any arrival the newest audio and video timestamps are close (neither track is
    # buffered behind the other). nginx-rtmp restamps each track for a joining viewer, so timestamps
    # cannot show an offset made before the server: lip sync is checked on the content below.
    gaps = []
    for pts, arrival in pulled.video[len(pulled.video) // 4:]:
        audio_before = [a for a, t, _ in pulled.audio if t <= arrival]
        if audio_before:
            gaps.append(abs(audio_before[-1] - pts))
    assert gaps and float(np.median(gaps)) < 0.3, gaps
    loud = [rms for _, _, rms in pulled.audio if rms > VOICED_RMS]
    assert loud, "the /human speech never reached the viewer"
    audio_onset, video_onset = speech_onsets(pulled, posted)
    assert abs(video_onset - audio_onset) < SYNC_TOLERANCE_S, (audio_onset - posted, video_onset - posted)


@pytest.fixture
async def whip_endpoint():
    from tests.support.whip_server import WhipEndpoint

    endpoint = WhipEndpoint()
    await endpoint.start()
    yield endpoint
    await endpoint.close()


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def test_whip_publishes_speaks_by_fixed_id_reconnects_and_deletes(data_dir, whip_endpoint, http):
    from tests.support.whip_server import TOKEN

    server = await start_server(server_args(data_dir, "--transport", "whip", "--push-url", whip_endpoint.url,
                                            "--push-token", TOKEN, "--push-session-id", PUSH_ID))
    try:
        await wait_for(lambda: any(p.video_frames >= 25 for p in whip_endpoint.live()), what="media at the endpoint")
        first = whip_endpoint.live()[0]
        assert len(first.audio_peaks) >= 25 and max(first.audio_peaks) < VOICED_PEAK  # idle: silence
        status, body = await post(http, f"{server.url}/human", {"sessionid": PUSH_ID, "text": "Hello from the stage."})
        assert status == 200, body
        await wait_for(lambda: max(first.audio_peaks) > VOICED_PEAK, what="speech at the endpoint")
        status, _ = await post(http, f"{server.url}/interrupt_talk", {"sessionid": PUSH_ID})
        assert status == 200

        await whip_endpoint.drop_all()  # the media server goes away: the client publishes again
        await wait_for(lambda: len(whip_endpoint.publications) == 2 and any(
            p.video_frames >= 10 for p in whip_endpoint.live()), what="a second publication")
        assert server.context.sessions.get(PUSH_ID) is not None  # same session, same id
    finally:
        await server.runner.cleanup()
    assert ("DELETE", 200) in whip_endpoint.requests  # shutdown ended the publication on the server
    assert not whip_endpoint.live()


async def test_rtmp_push_reconnects_when_the_media_server_comes_back(data_dir, tmp_path):
    from ops.broadcast import BROADCAST_KEY

    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/avatar"
    nginx = NginxProcess(tmp_path / "rtmp1", rtmp_config(tmp_path / "rtmp1", port)).start(port)
    server = await start_server(server_args(data_dir, "--transport", "rtmp", "--push-url", url))
    try:
        stats = server.app[BROADCAST_KEY].pusher.stats
        await wait_for(lambda: stats.video_frames >= 25, what="the first push")
        nginx.stop()
        await wait_for(lambda: bool(stats.last_error), what="the push noticing the server is gone")
        nginx = NginxProcess(tmp_path / "rtmp2", rtmp_config(tmp_path / "rtmp2", port)).start(port)
        await wait_for(lambda: stats.connects >= 2, timeout=30, what="a second connection")
        pulled, stop = Pulled(), threading.Event()
        await asyncio.get_running_loop().run_in_executor(None, pull, url, 2.0, pulled, stop)
        assert len(pulled.video) >= 10, pulled.error  # viewers see the session again
    finally:
        await server.runner.cleanup()
        nginx.stop()
