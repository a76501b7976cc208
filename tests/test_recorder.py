"""POST /record: the session's own frames and audio, on its clock, to a playable MP4."""

from __future__ import annotations

import asyncio
import json
import time

import av
import numpy as np
import pytest

from tests.support.clip_helpers import write_frames, write_tone
from tests.conftest import TEST_AVATAR_SIZE, server_args, start_server
from tests.support.rtc_client import ReceiverClient
from tests.test_actions import post, wait_until

FLASH_FRAME = 10  # the sync clip turns white at frame 10 and its tone starts at 10 * 40 ms


@pytest.fixture(scope="module")
def sync_config(data_dir) -> str:
    root = data_dir / "customvideo" / "sync"
    write_frames(root / "flash", 25, (60, 60, 60), flash_from=FLASH_FRAME)
    write_tone(root / "flash.wav", 1.0, rate=16000, silent_until=FLASH_FRAME * 0.04)
    return json.dumps([{"audiotype": 2, "imgpath": "customvideo/sync/flash", "audiopath": "customvideo/sync/flash.wav"}])


def read_recording(path) -> dict:
    """Decode a recording: video frame times and brightness, audio samples and start time."""
    with av.open(str(path)) as container:
        video_stream = container.streams.video[0]
        frames = [(float(f.time), float(f.to_ndarray(format="gray").mean()))
                  for f in container.decode(video_stream)]
    with av.open(str(path)) as container:
        audio_frames = list(container.decode(container.streams.audio[0]))
    audio = np.concatenate([f.to_ndarray().reshape(-1) for f in audio_frames])
    return {"frames": frames, "audio": audio, "audio_start": float(audio_frames[0].time),
            "rate": audio_frames[0].sample_rate, "size": (video_stream.width, video_stream.height)}


async def download(http, url: str, sid: str, tmp_path) -> tuple[int, object]:
    async with http.get(f"{url}/record/{sid}") as response:
        if response.status != 200:
            return response.status, await response.json()
        path = tmp_path / f"{sid}.mp4"
        path.write_bytes(await response.read())
        return 200, path


async def test_recording_matches_what_was_sent_in_sync(server, http, sync_config, tmp_path):
    client = ReceiverClient(server.url, offer_fields={"custom_config": sync_config})
    await client.connect(http)
    await client.wait_for(video_frames=5, audio_frames=10)
    url, sid = server.url, client.sessionid
    assert (await download(http, url, sid, tmp_path))[0] == 404
    status, body = await post(http, f"{url}/record", {"sessionid": sid, "type": "start_record"})
    assert status == 200 and body["data"]["url"] == f"/record/{body['data']['recording']}", body
    assert (await post(http, f"{url}/record", {"sessionid": sid, "type": "start_record"}))[0] == 409
    status, body = await download(http, url, sid, tmp_path)
    assert status == 409 and "end_record" in body["msg"]
    await asyncio.sleep(0.4)
    assert (await post(http, f"{url}/set_audiotype", {"sessionid": sid, "audiotype": 2}))[0] == 200
    def flash_sent() -> bool:
        white = [i for i, f in enumerate(client.video) if f.data.mean() > 200]
        return bool(white) and any(f.data.mean() < 150 for f in client.video[white[-1] + 1:])

    await wait_until(flash_sent, what="the whole flash clip at the listener")
    status, body = await post(http, f"{url}/record", {"sessionid": sid, "type": "end_record"})
    assert status == 200, body
    frames_written = body["data"]["frames"]
    status, path = await download(http, url, sid, tmp_path)
    assert status == 200
    rec = read_recording(path)
    assert rec["size"] == (TEST_AVATAR_SIZE, TEST_AVATAR_SIZE)
    times = [t for t, _ in rec["frames"]]
    assert len(times) == frames_written and len(times) >= 25  # at least the whole clip
    assert np.allclose(np.diff(times), 0.04, atol=1e-3)  # one frame per tick of the session clock
    video_seconds = len(times) * 0.04
    audio_seconds = rec["audio"].size / rec["rate"]
    assert abs(audio_seconds - video_seconds) < 0.1, (audio_seconds, video_seconds)
    # A/V sync: the white flash and the tone onset were sent on the same tick.
    flash = next(t for t, brightness in rec["frames"] if brightness > 200)
    loud = np.flatnonzero(np.abs(rec["audio"]) > 0.1)
    tone = rec["audio_start"] + loud[0] / rec["rate"]
    assert abs(tone - flash) < 0.01, (tone, flash)
    # The tone ends with the last fully white frame (0.6 s after it began, plus any late ticks).
    white = [t for t, brightness in rec["frames"] if brightness > 245]
    assert len(white) >= 25 - FLASH_FRAME, len(white)
    tone_end = rec["audio_start"] + (loud[-1] + 1) / rec["rate"]
    assert abs(tone_end - (white[-1] + 0.04)) < 0.01, (tone_end, white[-1])
    # Bad bodies.
    assert (await post(http, f"{url}/record", {"sessionid": sid, "type": "end_record"}))[0] == 409
    assert (await post(http, f"{url}/record", {"sessionid": sid, "type": "pause"}))[0] == 400
    for bad in ("..%2F..%2Fetc", "a" * 80):
        async with http.get(f"{url}/record/{bad}") as response:
            assert response.status in (400, 404)
    await client.close()


async def test_the_cap_stops_a_recording_and_closing_the_session_finalises_it(data_dir, http, tmp_path):
    running = await start_server(server_args(data_dir, "--record-max-seconds", "1"))
    try:
        url = running.url
        clients = []
        for _ in range(2):
            client = ReceiverClient(url)
            await client.connect(http)
            await client.wait_for(video_frames=5)
            clients.append(client)
            assert (await post(http, f"{url}/record", {"sessionid": client.sessionid, "type": "start_record"}))[0] == 200
        capped, closed = clients
        await asyncio.sleep(0.5)
        await running.context.sessions.close(closed.sessionid, "test closes it mid-recording")
        status, path = await download(http, url, closed.sessionid, tmp_path)
        assert status == 200, path
        rec = read_recording(path)
        assert 5 <= len(rec["frames"]) < 25  # closed after ~0.5 s, before the cap
        deadline = time.monotonic() + 10
        while (status := (await download(http, url, capped.sessionid, tmp_path))[0]) == 409:
            assert time.monotonic() < deadline, "the 1 s cap did not stop the recording"
            await asyncio.sleep(0.1)
        assert status == 200
        rec = read_recording(capped_path := tmp_path / f"{capped.sessionid}.mp4")
        assert len(rec["frames"]) == 25 and capped_path.stat().st_size > 0
        for client in clients:
            await client.close()
    finally:
        await running.runner.cleanup()
