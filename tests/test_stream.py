"""A real aiortc peer receives the idle stream over loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from tests.support.rtc_client import ReceiverClient

AUDIO_48K_FRAME = 960  # aiortc's Opus decoder yields 20 ms at 48 kHz


async def test_idle_stream_is_paced_and_on_one_clock(server, http):
    client = ReceiverClient(server.url)
    await client.connect(http)
    try:
        await client.wait_for(video_frames=5, audio_frames=5)
        start_video, start_audio = len(client.video), len(client.audio)
        await asyncio.sleep(2.2)
        video = client.video[start_video:]
        audio = client.audio[start_audio:]
    finally:
        await client.close()

    video_steps = np.diff([f.pts for f in video])
    assert len(video) >= 45, f"only {len(video)} video frames in 2.2 s"
    assert set(video_steps.tolist()) == {3600}, f"video pts steps {sorted(set(video_steps.tolist()))}"

    audio_steps = np.diff([f.pts for f in audio])
    assert len(audio) >= 100
    assert set(audio_steps.tolist()) == {AUDIO_48K_FRAME}, "audio is not contiguous"

    fps = (len(video) - 1) / (video[-1].arrival - video[0].arrival)
    assert 23.0 <= fps <= 27.0, f"{fps:.1f} fps"

    # Both tracks follow one clock: arrival time minus media time is the same
    # offset for audio and video (up to jitter buffers), and neither drifts.
    video_offset = np.array([f.arrival - (f.pts - video[0].pts) / 90000 for f in video])
    audio_offset = np.array([f.arrival - (f.pts - audio[0].pts) / 48000 for f in audio])
    first_gap = audio[0].arrival - video[0].arrival
    skew = (np.median(audio_offset) - audio_offset[0]) - (np.median(video_offset) - video_offset[0])
    assert abs(skew) < 0.06, f"audio and video run on different clocks: {skew * 1000:.0f} ms apart"
    for offsets in (video_offset, audio_offset):
        half = len(offsets) // 2
        drift = np.median(offsets[half:]) - np.median(offsets[:half])
        assert abs(drift) < 0.04, f"media time drifts from wall time by {drift * 1000:.0f} ms per second"
    assert abs(first_gap) < 0.5


async def test_idle_frames_follow_the_avatar_loop(server, http):
    client = ReceiverClient(server.url)
    await client.connect(http)
    try:
        await client.wait_for(video_frames=30, timeout=20)
    finally:
        await client.close()
    # The test avatar has a white marker that moves right frame by frame and
    # back (ping-pong): its x position on the received frames must go both ways.
    positions = []
    for frame in client.video[5:30]:
        row = frame.data[8:22].mean(axis=(0, 2))
        positions.append(int(np.argmax(row > 200)))
    steps = np.sign(np.diff(positions))
    assert (steps > 0).any() and (steps < 0).any(), positions


async def test_closing_the_client_frees_the_session(server, http):
    before = {t.name for t in threading.enumerate()}
    client = ReceiverClient(server.url)
    await client.connect(http)
    await client.wait_for(video_frames=10, audio_frames=10)
    assert len(server.context.sessions) == 1
    session_tag = client.sessionid[:8]
    engine_threads = [t for t in threading.enumerate() if t.name.endswith(session_tag)]
    assert sorted(t.name.split("-")[0] for t in engine_threads) == ["compose", "render", "tts"]

    await client.close()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        alive = [t for t in threading.enumerate() if t.name.endswith(session_tag)]
        if len(server.context.sessions) == 0 and not alive:
            break
        await asyncio.sleep(0.05)
    assert len(server.context.sessions) == 0, "session still registered 2 s after the client closed"
    assert not [t.name for t in threading.enumerate() if t.name.endswith(session_tag)]
    leftover = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith(("render-", "compose-", "tts-")) for name in leftover)


async def test_server_shutdown_closes_every_session(data_dir, http):
    from tests.conftest import server_args, start_server

    running = await start_server(server_args(data_dir))
    clients = [ReceiverClient(running.url) for _ in range(2)]
    for client in clients:
        await client.connect(http)
    for client in clients:
        await client.wait_for(video_frames=3)
    sessions = running.context.sessions.all()
    await running.runner.cleanup()
    assert len(running.context.sessions) == 0
    assert all(s.closed for s in sessions)
    assert not [t for t in threading.enumerate() if t.name.startswith(("render-", "compose-", "tts-"))]
    for client in clients:
        await client.close()


async def test_idle_timeout_closes_a_silent_peer_but_not_one_that_sends_heartbeats(data_dir, http):
    from tests.conftest import server_args, start_server

    running = await start_server(server_args(data_dir, "--idle-timeout", "1.5"))
    quiet = ReceiverClient(running.url)
    chatty = ReceiverClient(running.url)
    try:
        await quiet.connect(http)
        quiet.stop_reports()  # RTCP reports alone keep a peer alive (test_livetalking_pages)
        await chatty.connect(http, data_channel=True)
        await chatty.wait_for(video_frames=3)
        for _ in range(14):  # 4.2 s, well past the timeout
            if chatty.channel.readyState == "open":
                chatty.channel.send('{"type": "ping"}')
            await asyncio.sleep(0.3)
        ids = {s.id for s in running.context.sessions.all()}
        assert quiet.sessionid not in ids, "a silent session outlived --idle-timeout"
        assert chatty.sessionid in ids, "a session sending heartbeats was closed"
    finally:
        await quiet.close()
        await chatty.close()
        await running.runner.cleanup()


async def test_many_connect_disconnect_cycles_leak_no_sessions_threads_or_engines(server, http):
    import gc
    import warnings

    from basereal import BaseReal
    from session import Session

    def live_engines() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on every object trips torch's deprecation shims
            warnings.simplefilter("ignore")
            return sum(1 for obj in gc.get_objects() if isinstance(obj, (BaseReal, Session)))

    def own_threads() -> int:
        """Threads other than the loop's default executor (a pool that grows to a fixed size on demand)."""
        return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    baseline_threads = own_threads()
    for _ in range(8):
        client = ReceiverClient(server.url, keep_video=False)
        await client.connect(http)
        await client.wait_for(video_frames=3, audio_frames=3)
        await client.close()
        deadline = time.monotonic() + 2.0
        while len(server.context.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(server.context.sessions) == 0
    await asyncio.sleep(0.3)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("render-", "compose-", "tts-"))]
    assert own_threads() <= baseline_threads, [t.name for t in threading.enumerate()]
    deadline = time.monotonic() + 3.0
    while live_engines() and time.monotonic() < deadline:  # the last close may still be unwinding
        await asyncio.sleep(0.1)
    assert live_engines() == 0, "closed sessions are still referenced"
