"""LiveTalking avatar folders, generated here in their layout, load as they are; their pickles cannot run code."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import genavatar
from avatars import safepickle
from avatars.format import AvatarError
from avatars.store import AvatarStore, load_avatar
from basereal import EngineConfig, FrameWork
from litereal import LiteReal
from avatars.livetalking import LANDMARKS_CACHE, MUSETALK, WAV2LIP, livetalking_kind
from media import CHUNK_SAMPLES, AudioChunk
from musereal import MuseReal, MuseTalkRuntime
from musetalk.loader import load_models
from musetalk.prepare import crop_face, load_latents
from musetalk.settings import MuseTalkSettings
from musetalk.vae import encode_for_unet
from tests.conftest import PHOTO_AVATAR_ID, server_args, start_server
from tests.support.musetalk_fixtures import spoken, write_tiny_weights
from tests.support.rtc_client import ReceiverClient

LT_MUSE = "lt_muse"
LT_WAV2LIP = "lt_w2l"


class OpensFile:
    """A pickle payload that creates a file when unpickled by the standard pickle module."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def write_livetalking_musetalk(folder: Path, source, vae) -> Path:
    """A folder as LiveTalking's musetalk genavatar writes it (numpy-int tuples, 3-channel masks, latent list)."""
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "mask").mkdir()
    coords, latents = [], []
    for index, frame in enumerate(source.frames):
        cv2.imwrite(str(folder / "full_imgs" / f"{index:08d}.png"), frame)
        mask = cv2.cvtColor(source.masks[index], cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(folder / "mask" / f"{index:08d}.png"), mask)
        coords.append(tuple(np.int64(v) for v in source.face_boxes[index]))
        with torch.inference_mode():
            latents.append(encode_for_unet(vae, [crop_face(frame, source.face_boxes[index])]))
    (folder / "coords.pkl").write_bytes(pickle.dumps(coords))
    (folder / "mask_coords.pkl").write_bytes(pickle.dumps([[int(v) for v in box] for box in source.crop_boxes]))
    torch.save(latents, folder / "latents.pt")
    (folder / "avator_info.json").write_text(json.dumps({"avatar_id": folder.name, "video_path": "x.mp4",
                                                          "bbox_shift": 0, "version": "v15"}))
    return folder


def write_livetalking_wav2lip(folder: Path, source) -> Path:
    """A folder as LiveTalking's wav2lip genavatar writes it: boxes as (y1, y2, x1, x2)."""
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "face_imgs").mkdir()
    coords = []
    for index, frame in enumerate(source.frames):
        x1, y1, x2, y2 = (np.int64(v) for v in source.face_boxes[index])
        cv2.imwrite(str(folder / "full_imgs" / f"{index:08d}.png"), frame)
        cv2.imwrite(str(folder / "face_imgs" / f"{index:08d}.png"), cv2.resize(frame[y1:y2, x1:x2], (256, 256)))
        coords.append((y1, y2, x1, x2))
    (folder / "coords.pkl").write_bytes(pickle.dumps(coords))
    return folder


@pytest.fixture(scope="module")
def lt_env(tmp_path_factory, data_dir):
    """(models_dir, data_dir) with the photo avatar copied into both LiveTalking layouts."""
    root = tmp_path_factory.mktemp("lt")
    models_dir = write_tiny_weights(root / "models")
    models = load_models(models_dir, device="cpu")
    source = load_avatar(data_dir / "avatars" / PHOTO_AVATAR_ID)
    avatars = root / "data" / "avatars"
    write_livetalking_musetalk(avatars / LT_MUSE, source, models.vae)
    write_livetalking_wav2lip(avatars / LT_WAV2LIP, source)
    return models_dir, root / "data", source


def test_restricted_unpickler_reads_what_livetalking_writes():
    boxes = [(np.int64(1), np.int64(2), np.int64(30), np.int64(40)), [5, 6, 70, 80.5]]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert safepickle.loads(pickle.dumps(boxes, protocol=protocol)) == boxes
        array = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert np.array_equal(safepickle.loads(pickle.dumps(array, protocol=protocol)), array)


def test_malicious_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps([(1, 2, 3, 4), OpensFile(marker)])
    pickle.loads(payload)
    assert marker.exists(), "the payload must be live for this test to mean anything"
    marker.unlink()
    with pytest.raises(safepickle.UnsafePickle, match="refusing to load"):
        safepickle.loads(payload)
    for other in ({"a": 1}, np.array([None, 1], dtype=object), "text"):
        with pytest.raises(safepickle.UnsafePickle):
            safepickle.loads(pickle.dumps(other))
    assert not marker.exists()


def test_malicious_avatar_files_are_refused(lt_env, tmp_path):
    """A LiveTalking folder whose coords.pkl or latents.pt carries code: a clear error, nothing executed."""
    folder = shutil.copytree(lt_env[1] / "avatars" / LT_MUSE, tmp_path / "evil")
    marker = tmp_path / "ran"
    good_coords = (folder / "coords.pkl").read_bytes()
    (folder / "coords.pkl").write_bytes(pickle.dumps([OpensFile(marker)] * 25))
    with pytest.raises(AvatarError, match="refusing .*coords.pkl"):
        load_avatar(folder)
    (folder / "coords.pkl").write_bytes(good_coords)
    torch.save([OpensFile(marker)], folder / "latents.pt")
    avatar = load_avatar(folder)
    with pytest.raises(AvatarError, match="cannot read .*latents.pt"):
        load_latents(folder, avatar.frame_count)
    assert not marker.exists()


def test_livetalking_musetalk_folder_loads_as_is(lt_env):
    _, data, source = lt_env
    folder = data / "avatars" / LT_MUSE
    assert livetalking_kind(folder) == MUSETALK and livetalking_kind(data / "avatars" / LT_WAV2LIP) == WAV2LIP
    store = AvatarStore(data / "avatars")
    assert store.available() == [LT_MUSE, LT_WAV2LIP] and store.exists(LT_MUSE)
    avatar = store.get(LT_MUSE)
    assert np.array_equal(avatar.frames, source.frames)
    assert np.array_equal(avatar.face_boxes, source.face_boxes)
    assert np.array_equal(avatar.crop_boxes, source.crop_boxes)
    assert all(np.array_equal(a, b) for a, b in zip(avatar.masks, source.masks))
    assert avatar.metadata["format"] == MUSETALK and avatar.metadata["version"] == "v15"
    assert load_latents(folder, avatar.frame_count).shape == (avatar.frame_count, 8, 32, 32)
    wav2lip = store.get(LT_WAV2LIP)  # its (y1, y2, x1, x2) boxes read back as x1, y1, x2, y2
    assert np.array_equal(wav2lip.face_boxes, source.face_boxes) and wav2lip.masks is None


def test_frames_without_a_face_keep_latents_aligned(lt_env, tmp_path):
    """LiveTalking writes (0, 0, 0, 0) for a faceless frame and skips its latent; we borrow the neighbour's."""
    folder = shutil.copytree(lt_env[1] / "avatars" / LT_MUSE, tmp_path / "gap")
    coords = safepickle.load(folder / "coords.pkl")
    coords[3] = (0, 0, 0, 0)
    (folder / "coords.pkl").write_bytes(pickle.dumps(coords))
    latents = torch.load(folder / "latents.pt", weights_only=True)
    torch.save(latents[:3] + latents[4:], folder / "latents.pt")
    avatar = load_avatar(folder)
    assert avatar.metadata["faceless_frames"] == [3]
    assert tuple(avatar.face_boxes[3]) in (tuple(coords[2]), tuple(coords[4]))
    loaded = load_latents(folder, avatar.frame_count, avatar.metadata["faceless_frames"])
    assert loaded.shape[0] == avatar.frame_count
    assert torch.equal(loaded[5], latents[5][0]) and torch.equal(loaded[2], latents[2][0])


def test_musetalk_lip_syncs_a_livetalking_avatar(lt_env):
    models_dir, data, _ = lt_env
    avatar = AvatarStore(data / "avatars").get(LT_MUSE)
    runtime = MuseTalkRuntime(load_models(models_dir, device="cpu"), MuseTalkSettings())
    engine = MuseReal(avatar, EngineConfig(batch_size=4), "lt", runtime=runtime)
    try:
        audio = spoken("Pack my box with five dozen liquor jugs.", 0.16)
        chunks = [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]
        work = [FrameWork(index=k, chunks=chunks[2 * k:2 * k + 2], epoch=0) for k in range(4)]
        frame = engine.compose(work[0], engine.render_frames(work)[0])
    finally:
        engine.stop()
        runtime.close()
    x1, y1, x2, y2 = avatar.face_boxes[0]
    lower = slice((y1 + y2) // 2 + 4, y2), slice(x1 + 4, x2 - 4)
    assert np.abs(frame[lower].astype(int) - avatar.frames[0][lower]).mean() > 5
    assert np.array_equal(frame[: max(y1 - 30, 1)], avatar.frames[0][: max(y1 - 30, 1)])


def test_musetalk_names_the_conversion_for_a_wav2lip_folder(lt_env):
    from musereal import MuseAvatarAssets

    avatar = AvatarStore(lt_env[1] / "avatars").get(LT_WAV2LIP)
    with pytest.raises(AvatarError, match=r"genavatar.py --model musetalk --video .*full_imgs"):
        MuseAvatarAssets.build(avatar)


def test_lite_computes_landmarks_once_and_caches_them(lt_env, monkeypatch):
    _, data, source = lt_env
    folder = data / "avatars" / LT_WAV2LIP
    (folder / LANDMARKS_CACHE).unlink(missing_ok=True)
    avatar = AvatarStore(data / "avatars").get(LT_WAV2LIP, landmarks=True)
    assert (folder / LANDMARKS_CACHE).is_file()
    assert np.abs(avatar.landmarks - source.landmarks).max() < 4.0  # dlib on the same frames
    from avatars import facegeom
    def no_dlib(*_args, **_kwargs):
        raise AssertionError("landmarks were computed again instead of read from the cache")

    monkeypatch.setattr(facegeom, "FaceLandmarker", no_dlib)
    again = AvatarStore(data / "avatars").get(LT_WAV2LIP, landmarks=True)
    assert np.array_equal(again.landmarks, avatar.landmarks)

    engine = LiteReal(again, EngineConfig(), "lt")
    audio = spoken("Open wide, say ah.", 0.4)
    chunks = [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]
    work = [FrameWork(index=k, chunks=chunks[2 * k:2 * k + 2], epoch=0) for k in range(10)]
    shapes = engine.render_frames(work)
    moved = [engine.compose(item, shape) for item, shape in zip(work, shapes) if shape is not None]
    assert moved, "no frame opened the mouth"
    assert max(np.abs(f.astype(int) - again.frames[0]).max() for f in moved) > 30


@pytest.mark.parametrize("model, avatar_id", [("musetalk", LT_MUSE), ("lite", LT_WAV2LIP)])
async def test_server_streams_a_livetalking_avatar_by_id(lt_env, http, model, avatar_id):
    models_dir, data, source = lt_env
    running = await start_server(server_args(data, "--model", model, "--models-dir", str(models_dir),
                                             "--avatar_id", avatar_id))
    client = ReceiverClient(running.url)
    try:
        async with http.get(f"{running.url}/config") as response:
            assert avatar_id in (await response.json())["avatars"]
        await client.connect(http)
        await client.wait_for(video_frames=5, timeout=60)
    finally:
        await client.close()
        await running.runner.cleanup()
    first = client.video[0].data
    error = min(np.abs(first.astype(np.float32) - frame).mean() for frame in source.frames)
    assert error < 6, "the stream does not show the LiveTalking avatar's frames"


def test_genavatar_video_accepts_a_folder_of_frames(lt_env, tmp_path, landmarker):
    _, data, source = lt_env
    argv = ["--video", str(data / "avatars" / LT_WAV2LIP / "full_imgs"), "--avatar_id", "fromframes",
            "--max_frames", "4", "--data-dir", str(tmp_path)]
    assert genavatar.main(argv) == 0
    built = load_avatar(tmp_path / "avatars" / "fromframes")
    assert built.frame_count == 4 and built.has_face_data
    assert np.array_equal(built.frames, source.frames[:4])
