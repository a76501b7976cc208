"""The lite engine: lips follow real speech (re-measured with dlib), silence is the idle frame."""

from __future__ import annotations

import asyncio
import logging
import threading

import cv2
import numpy as np
import pytest

from avatars.store import load_avatar
from basereal import EngineConfig, to_video_frame
from scene import loop_index
from litereal import LiteReal
from media import CHUNK_SAMPLES, AudioChunk
from tools.render_sentence import TAIL_FRAMES, run_engine, synthesize_labelled
from tests.conftest import PHOTO_AVATAR_ID, TEST_AVATAR_ID
from tests.support.rtc_client import ReceiverClient

SENTENCE = "The quick brown fox jumps over the lazy dog. Please call me back tomorrow morning."
MAX_LAG = 3


@pytest.fixture(scope="module")
def astronaut(astronaut_build):
    return astronaut_build[1]


@pytest.fixture(scope="module")
def labelled():
    return synthesize_labelled(SENTENCE, "en-us")


@pytest.fixture(scope="module")
def speech(labelled):
    return labelled.samples


@pytest.fixture(scope="module", params=["phonemes", "audio only"])
def rendered(request, astronaut, labelled):
    """espeak's speech with its phoneme labels, and the same audio unlabelled (as uploads arrive)."""
    audio = labelled if request.param == "phonemes" else labelled.samples
    return run_engine(LiteReal(astronaut, EngineConfig(), "test"), audio)


def inner_lip_gap(landmarker, image, box) -> float:
    points = landmarker.landmarks(image, box)
    return float(np.mean(points[[65, 66, 67], 1] - points[[63, 62, 61], 1]))


def same_picture(frame, image) -> bool:
    expected = to_video_frame(image)
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frame.planes, expected.planes))


def test_inner_lip_gap_follows_the_speech_envelope(astronaut, speech, rendered, landmarker):
    box = landmarker.detect(astronaut.frames[0])
    voiced = len(speech) // (2 * CHUNK_SAMPLES)
    gaps = np.array([inner_lip_gap(landmarker, b.video.to_ndarray(format="bgr24"), box) for b in rendered[:voiced]])
    envelope = np.array([np.sqrt(np.mean((b.audio / 32768.0) ** 2)) for b in rendered[:voiced]])

    def pearson(lag: int) -> float:
        if lag >= 0:
            return float(np.corrcoef(gaps[lag:], envelope[: voiced - lag])[0, 1])
        return float(np.corrcoef(gaps[:lag], envelope[-lag:])[0, 1])

    at = {lag: pearson(lag) for lag in range(-MAX_LAG, MAX_LAG + 1)}
    assert at[0] >= 0.7, at
    assert at[0] > at[MAX_LAG] and at[0] > at[-MAX_LAG], at
    assert np.ptp(gaps) > 4.0, "the mouth barely opens"


def test_silence_frames_are_the_idle_frames(astronaut, speech, rendered):
    voiced = -(-len(speech) // (2 * CHUNK_SAMPLES))
    assert len(rendered) == voiced + TAIL_FRAMES
    count = astronaut.frame_count
    loud = [k for k, b in enumerate(rendered[:voiced]) if np.abs(b.audio).max() > 3000]
    changed = [k for k in loud if not same_picture(rendered[k].video, astronaut.frames[loop_index(k, count)])]
    assert len(changed) > 0.8 * len(loud)
    # Once the mouth has closed after the sentence, every frame is the idle frame, bit for bit.
    for k in range(voiced + 4, len(rendered)):
        assert same_picture(rendered[k].video, astronaut.frames[loop_index(k, count)]), k


def test_pure_silence_is_the_idle_loop(astronaut):
    bundles = run_engine(LiteReal(astronaut, EngineConfig(), "quiet"), np.zeros(0, np.float32), tail_frames=8)
    for k, bundle in enumerate(bundles):
        assert same_picture(bundle.video, astronaut.frames[loop_index(k, astronaut.frame_count)])


def test_avatar_without_face_data_streams_idle(data_dir, speech, caplog):
    avatar = load_avatar(data_dir / "avatars" / TEST_AVATAR_ID)
    with caplog.at_level(logging.WARNING):
        engine = LiteReal(avatar, EngineConfig(), "noface")
    assert "no face data" in caplog.text
    bundles = run_engine(engine, speech[: 16000], tail_frames=2)
    for k, bundle in enumerate(bundles):
        assert same_picture(bundle.video, avatar.frames[loop_index(k, avatar.frame_count)])


def feed(engine, audio: np.ndarray) -> threading.Thread:
    epoch = engine.epoch
    chunks = [AudioChunk(audio[i : i + CHUNK_SAMPLES], speech=True, epoch=epoch)
              for i in range(0, len(audio) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)]
    thread = threading.Thread(target=lambda: [engine.put_audio(c) for c in chunks], name="test-feeder", daemon=True)
    thread.start()
    return thread


async def test_live_session_mouth_moves_only_with_speech(server, http, speech):
    client = ReceiverClient(server.url, avatar=PHOTO_AVATAR_ID)
    await client.connect(http)
    try:
        await client.wait_for(video_frames=20, audio_frames=20)
        engine = server.context.sessions.all()[0].engine
        assert isinstance(engine, LiteReal)
        avatar = engine.avatar
        await asyncio.sleep(0.6)
        feeder = feed(engine, speech[: 2 * 16000])
        await asyncio.sleep(2.0)
        await asyncio.get_running_loop().run_in_executor(None, feeder.join, 5.0)
        await asyncio.sleep(2.0)
    finally:
        await client.close()

    lm = avatar.landmarks
    x1, y1 = np.floor(lm[:, 48:68].min(axis=(0, 1))).astype(int) - 2
    x2, y2 = np.ceil(lm[:, 48:68].max(axis=(0, 1))).astype(int) + 6
    audio_level = [(a.arrival, np.abs(a.data).max()) for a in client.audio]
    spoken = [t for t, level in audio_level if level > 3000]
    assert spoken, "no speech was received"
    start, end = min(spoken), max(spoken)
    # The idle loop moves the head a little: compare with the closest idle frame.
    idle = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[y1:y2, x1:x2] for image in avatar.frames]).astype(np.float32)

    def change(frame) -> float:
        mouth = cv2.cvtColor(frame.data, cv2.COLOR_BGR2GRAY)[y1:y2, x1:x2].astype(np.float32)
        return float(np.abs(idle - mouth).mean(axis=(1, 2)).min())

    during = [change(f) for f in client.video if start + 0.2 < f.arrival < end - 0.2]
    quiet = [change(f) for f in client.video[5:] if f.arrival < start - 0.3 or f.arrival > end + 0.8]
    assert len(during) > 20 and len(quiet) > 20
    assert np.percentile(during, 75) > 3 * max(np.percentile(quiet, 75), 1.0), (during, quiet)
    assert np.percentile(quiet, 90) < 4.0, quiet
