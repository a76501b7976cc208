"""The MuseTalk engine on tiny weights: the shared worker, avatar latents, and live WebRTC sessions."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import genavatar
from avatars.format import AvatarError
from avatars.store import load_avatar
from basereal import EngineConfig, FrameWork
from media import CHUNK_SAMPLES, AudioChunk
from museasr import MuseASR
from musereal import MuseReal, MuseTalkRuntime
from musetalk.loader import load_models
from musetalk.prepare import LATENTS_FILE, add_musetalk_latents, load_latents
from musetalk.settings import MuseTalkSettings
from musetalk.worker import InferenceWorker, LipSyncRequest
from tests.conftest import server_args, start_server
from tests.support.musetalk_fixtures import MOUTH_REGION, spoken, write_face_avatar, write_tiny_weights
from tests.support.rtc_client import ReceiverClient

AVATARS = {"museface": 90, "museface2": 200}  # avatar id -> background grey level
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs.")
CODEC_NOISE = 12.0  # mean |difference| a VP8 round trip may leave in the mouth region
SPOKEN_TIMEOUT_S = 60.0  # each batch runs a 30 s whisper pass: about a second on a busy 2-core CPU


@pytest.fixture(scope="module")
def muse_env(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("muse")
    models_dir = write_tiny_weights(root / "models")
    models = load_models(models_dir, device="cpu")
    for avatar_id, background in AVATARS.items():
        folder = write_face_avatar(root / "data" / "avatars" / avatar_id, background)
        add_musetalk_latents(folder, models)
    return models_dir, root / "data"


@pytest.fixture(scope="module")
def models(muse_env):
    return load_models(muse_env[0], device="cpu")


def test_latents_match_the_avatar(muse_env):
    folder = muse_env[1] / "avatars" / "museface"
    latents = load_latents(folder, frame_count=6)
    assert latents.shape == (6, 8, 32, 32)
    # every frame has the same face region here, so the same latents
    assert torch.allclose(latents[0], latents[5])
    with pytest.raises(AvatarError, match="genavatar.py --model musetalk"):
        load_latents(folder, frame_count=7)
    with pytest.raises(AvatarError, match=r"no MuseTalk latents \(latents\.pt\).*genavatar\.py --model musetalk"):
        load_latents(folder.parent / "nowhere", frame_count=6)
    assert (folder / LATENTS_FILE).is_file()


def _request(models, owner: str, avatar_folder: Path, seed: int, current=lambda: True,
             frames: int = 4) -> LipSyncRequest:
    asr = MuseASR(fps=25, right_chunks=10, edge="zero")
    audio = spoken(SENTENCES[seed % 2], 0.4)
    chunks = [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]
    latents = load_latents(avatar_folder, 6)[:frames]
    return LipSyncRequest(owner=owner, audio=asr.window(chunks[:2 * frames], chunks[2 * frames:]), latents=latents,
                          is_current=current)


def _infer_all(worker: InferenceWorker, requests: list[LipSyncRequest]) -> list[np.ndarray]:
    results: list = [None] * len(requests)
    never = threading.Event()

    def run(index: int) -> None:
        results[index] = worker.infer(requests[index], never)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    return results, threads


def test_worker_batches_sessions_without_mixing(muse_env, models):
    """Faces for a session batched with another equal the faces it gets alone."""
    avatars = muse_env[1] / "avatars"
    solo_worker = InferenceWorker(models, max_batch=32)
    solo_worker.start()
    never = threading.Event()
    alone_a = solo_worker.infer(_request(models, "a", avatars / "museface", seed=0), never)
    alone_b = solo_worker.infer(_request(models, "b", avatars / "museface2", seed=1), never)
    solo_worker.stop()
    assert alone_a.shape == (4, 256, 256, 3)

    worker = InferenceWorker(models, max_batch=32)
    requests = [_request(models, "a", avatars / "museface", seed=0),
                _request(models, "b", avatars / "museface2", seed=1)]
    results, threads = _infer_all(worker, requests)
    deadline = time.monotonic() + 5
    while worker._requests.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.start()  # both requests are queued: one UNet pass serves them
    for thread in threads:
        thread.join(10)
    worker.stop()
    assert worker.stats.batches == 1 and worker.stats.shared_batches == 1 and worker.stats.frames == 8
    # Batch composition changes float rounding only (GroupNorm and attention are per sample):
    # each result stays far closer to its own solo faces than to the other session's.
    apart = np.abs(alone_a.astype(np.float32) - alone_b).mean()
    assert apart > 10
    for result, own in zip(results, (alone_a, alone_b)):
        error = np.abs(result.astype(np.float32) - own)
        assert error.mean() < 0.5 and error.max() <= 16, (error.mean(), error.max())


def test_worker_drops_stale_requests(muse_env, models):
    worker = InferenceWorker(models, max_batch=32)
    worker.start()
    try:
        stale = _request(models, "a", muse_env[1] / "avatars" / "museface", seed=1, current=lambda: False)
        assert worker.infer(stale, threading.Event()) is None
        assert worker.stats.dropped == 1 and worker.stats.batches == 0
    finally:
        worker.stop()
    assert not worker._thread.is_alive()


def _mouth_diff(received: np.ndarray, idle: np.ndarray) -> float:
    return float(np.abs(received[MOUTH_REGION].astype(np.float32) - idle[MOUTH_REGION]).mean())


async def _speak(session, seconds: float, seed: int) -> None:
    """Put `seconds` of espeak speech straight into the session's engine, as its TTS thread would."""
    audio = spoken(SENTENCES[seed % 2], seconds)
    chunks = [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, session.engine.epoch)
              for i in range(0, len(audio), CHUNK_SAMPLES)]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: [session.engine.put_audio(chunk) for chunk in chunks])


async def _wait_for_idle_tail(client, idle: np.ndarray, frames: int = 20,
                             timeout: float = SPOKEN_TIMEOUT_S) -> None:
    """Until the last `frames` frames received show the idle mouth (speech has drained from the wire)."""
    deadline = time.monotonic() + timeout
    while True:
        tail = client.video[-frames:]
        if len(tail) == frames and all(_mouth_diff(frame.data, idle) <= CODEC_NOISE for frame in tail):
            return
        assert time.monotonic() < deadline, "the speech never drained from the wire"
        await asyncio.sleep(0.1)


def _speech_run(diffs: list[float]) -> tuple[int, int]:
    """First and last index of frames whose mouth region differs from the idle frame."""
    changed = [i for i, d in enumerate(diffs) if d > CODEC_NOISE]
    assert changed, f"no frame changed in the mouth region: {[round(d, 1) for d in diffs]}"
    return changed[0], changed[-1]


async def _wait_until_spoken(session, worker_frames, frames: int, timeout: float = SPOKEN_TIMEOUT_S) -> None:
    """Until the session's audio is consumed and the worker has made `frames` faces in all."""
    deadline = time.monotonic() + timeout
    while session.engine.audio_in.qsize() or worker_frames() < frames:
        assert time.monotonic() < deadline, f"worker made {worker_frames()} of {frames} frames"
        await asyncio.sleep(0.05)


def _check_speech_then_idle(diffs: list[float], speech_frames: int, late_ticks: int) -> None:
    """Idle frames, one run of lip-synced frames as long as the speech, idle frames again.

    On a busy CPU the tiny model can fall behind real time; the wire then repeats
    the last frame (counted in late_ticks), which may lengthen the run.
    """
    first, last = _speech_run(diffs)
    assert first >= 8 and all(d <= CODEC_NOISE for d in diffs[:first]), "mouth moved before any speech"
    run = diffs[first:last + 1]
    assert speech_frames - 6 <= len(run) <= speech_frames + late_ticks + 2, (len(run), speech_frames, late_ticks)
    assert sum(d > CODEC_NOISE for d in run) >= 0.9 * len(run)
    after = diffs[last + 1:]
    assert len(after) >= 20 and all(d <= CODEC_NOISE for d in after), "silence did not return to idle frames"


async def test_live_session_lip_syncs_speech_and_idles_in_silence(muse_env, http):
    models_dir, data_dir = muse_env
    running = await start_server(server_args(data_dir, "--model", "musetalk", "--models-dir", str(models_dir),
                                             "--avatar_id", "museface"))
    client = ReceiverClient(running.url)
    try:
        await client.connect(http)
        await client.wait_for(video_frames=15)
        session = running.context.sessions.get(client.sessionid)
        assert type(session.engine).__name__ == "MuseReal"
        worker = running.context.engines._musetalk.worker
        assert worker.stats.frames == 0  # silence so far: no inference at all
        await _speak(session, 1.6, seed=0)  # 80 chunks = 40 video frames
        await _wait_until_spoken(session, lambda: worker.stats.frames, 40)
        await client.wait_for(video_frames=len(client.video) + 40, timeout=SPOKEN_TIMEOUT_S)
        await _wait_for_idle_tail(client, load_avatar(data_dir / "avatars" / "museface").frames[0])
        stats, late = worker.stats, session.player.stats.late_ticks
    finally:
        await client.close()
        await running.runner.cleanup()

    idle = load_avatar(data_dir / "avatars" / "museface").frames[0]
    _check_speech_then_idle([_mouth_diff(frame.data, idle) for frame in client.video], 40, late)
    assert 40 <= stats.frames <= 48  # a batch may end with a few silent frames
    assert not worker._thread.is_alive(), "the worker outlived the server"


async def test_two_sessions_share_one_worker_and_keep_their_frames(muse_env, http):
    models_dir, data_dir = muse_env
    running = await start_server(server_args(data_dir, "--model", "musetalk", "--models-dir", str(models_dir),
                                             "--avatar_id", "museface"))
    clients = {avatar_id: ReceiverClient(running.url, avatar=avatar_id) for avatar_id in AVATARS}
    seconds = {"museface": 1.6, "museface2": 0.8}
    try:
        for client in clients.values():
            await client.connect(http)
        for client in clients.values():
            await client.wait_for(video_frames=12)
        assert len([t for t in threading.enumerate() if t.name == "musetalk-worker"]) == 1
        worker = running.context.engines._musetalk.worker
        sessions = {a: running.context.sessions.get(c.sessionid) for a, c in clients.items()}
        await asyncio.gather(*(_speak(sessions[a], seconds[a], seed=i) for i, a in enumerate(AVATARS)))
        for session in sessions.values():
            await _wait_until_spoken(session, lambda: worker.stats.frames, 60)
        for avatar_id, client in clients.items():
            await client.wait_for(video_frames=len(client.video) + 30, timeout=SPOKEN_TIMEOUT_S)
            await _wait_for_idle_tail(client, load_avatar(data_dir / "avatars" / avatar_id).frames[0])
        stats = worker.stats
        late = {a: s.player.stats.late_ticks for a, s in sessions.items()}
    finally:
        for client in clients.values():
            await client.close()
        await running.runner.cleanup()

    assert stats.shared_batches >= 1, stats  # both sessions' frames went through one UNet pass
    for avatar_id, client in clients.items():
        avatar = load_avatar(data_dir / "avatars" / avatar_id)
        background = AVATARS[avatar_id]
        for frame in client.video:
            corner = frame.data[140:158, 2:18].astype(np.float32).mean()
            assert abs(corner - background) < 10, f"{avatar_id} received another avatar's frame"
        diffs = [_mouth_diff(frame.data, avatar.frames[0]) for frame in client.video]
        _check_speech_then_idle(diffs, round(seconds[avatar_id] * 25), late[avatar_id])


def test_interrupt_drops_speech_in_flight(muse_env, models):
    """After interrupt() no frame of the old epoch leaves the engine, even one the worker was computing."""

    runtime = MuseTalkRuntime(models, MuseTalkSettings())
    engine = MuseReal(load_avatar(muse_env[1] / "avatars" / "museface"), EngineConfig(batch_size=8), "interrupt",
                      runtime=runtime)
    engine.start()
    try:
        audio = spoken(SENTENCES[0], 1.6)
        for start in range(0, len(audio), CHUNK_SAMPLES):
            assert engine.put_audio(AudioChunk(audio[start:start + CHUNK_SAMPLES], True, 0))
        deadline = time.monotonic() + 10
        while runtime.worker.stats.frames < 2:  # speech is being lip-synced
            assert time.monotonic() < deadline
            time.sleep(0.01)
        epoch = engine.interrupt()
        bundles = []
        while len(bundles) < 20:
            bundles.append(engine.output.get(timeout=5))
        assert all(b.epoch == epoch and not b.speech for b in bundles)
        assert runtime.worker.stats.frames < 40  # the rest of the utterance never reached the model
    finally:
        engine.stop()
        runtime.close()


def test_genavatar_prepares_musetalk_latents_for_a_real_face(muse_env, tmp_path, models):
    """genavatar --model musetalk on the astronaut photo (real dlib landmarks): latents per frame,
    and the MuseTalk engine lip-syncs that avatar."""

    models_dir = muse_env[0]
    argv = ["--default", "--avatar_id", "astro", "--model", "musetalk", "--loop_seconds", "0.4",
            "--data-dir", str(tmp_path), "--models-dir", str(models_dir)]
    assert genavatar.main(argv) == 0
    avatar = load_avatar(tmp_path / "avatars" / "astro")
    latents = load_latents(avatar.folder, avatar.frame_count)
    assert latents.shape == (avatar.frame_count, 8, 32, 32)

    runtime = MuseTalkRuntime(models, MuseTalkSettings())
    engine = MuseReal(avatar, EngineConfig(batch_size=4), "astro", runtime=runtime)
    try:
        audio = spoken(SENTENCES[1], 0.16)
        chunks = [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]
        work = [FrameWork(index=k, chunks=chunks[2 * k:2 * k + 2], epoch=0) for k in range(4)]
        faces = engine.render_frames(work)
        frame = engine.compose(work[0], faces[0])
        x1, y1, x2, y2 = avatar.face_boxes[0]
        lower = slice((y1 + y2) // 2 + 4, y2), slice(x1 + 4, x2 - 4)
        assert np.abs(frame[lower].astype(int) - avatar.frames[0][lower]).mean() > 5  # the mouth was redrawn
        assert np.array_equal(frame[: max(y1 - 40, 1)], avatar.frames[0][: max(y1 - 40, 1)])  # far above: untouched
    finally:
        engine.stop()
        runtime.close()


def test_genavatar_musetalk_without_weights_says_what_to_run(tmp_path, caplog):

    argv = ["--default", "--avatar_id", "astro", "--model", "musetalk", "--loop_seconds", "0.2",
            "--data-dir", str(tmp_path), "--models-dir", str(tmp_path / "empty")]
    assert genavatar.main(argv) == 2
    assert "tools.download_models" in caplog.text
    assert not (tmp_path / "avatars" / "astro").exists()  # nothing half-made goes live


def test_bucket_padding_and_channels_last_keep_the_faces(muse_env, models):
    """The GPU speed-up paths on CPU: a 3-frame pass padded to 4 (what compiled models run) and
    channels-last weights give the faces of a plain pass."""
    from musetalk.accel import accelerate, bucket

    assert [bucket(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    never = threading.Event()
    results = []
    for pad, memory in ((False, False), (True, False), (True, True)):
        fresh = load_models(muse_env[0], device="cpu")
        worker = InferenceWorker(accelerate(fresh, channels_last=memory), max_batch=32, pad_to_bucket=pad)
        worker.start()
        try:
            request = _request(models, "a", muse_env[1] / "avatars" / "museface", seed=0, frames=3)
            results.append(worker.infer(request, never))
        finally:
            worker.stop()
    assert results[0].shape == (3, 256, 256, 3)
    for other in results[1:]:  # float rounding only, as for batches shared between sessions
        error = np.abs(other.astype(np.float32) - results[0])
        assert error.mean() < 0.5 and error.max() <= 16, (error.mean(), error.max())
