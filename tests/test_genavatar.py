"""Avatar preparation on real faces: landmarks, MuseTalk's box rule, masks, idle loop, bad input."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

import genavatar
from avatars.format import AvatarError
from avatars.store import load_avatar
from avatars.facegeom import FaceError, crop_box, face_box
from avatars.prepare import PrepareOptions, build_avatar, default_photo

from tests.conftest import ASTRONAUT_LOOP_SECONDS as LOOP_SECONDS


@pytest.fixture
def photo_avatar(astronaut_build):
    return astronaut_build


def test_photo_becomes_an_avatar_with_face_data(photo_avatar):
    report, avatar = photo_avatar
    count = int(LOOP_SECONDS * 25)
    assert report.frames == avatar.frame_count == count
    assert (report.faces_detected, report.faces_interpolated) == (1, 0)
    assert avatar.has_face_data
    assert avatar.frames.shape == (count, 512, 512, 3)
    assert avatar.landmarks.shape == (count, 68, 2) and avatar.landmarks.dtype == np.float32
    assert avatar.face_boxes.shape == avatar.crop_boxes.shape == (count, 4)
    assert len(avatar.masks) == count
    meta = json.loads((avatar.folder / "avatar.json").read_text())
    assert meta["source"] == "astronaut" and meta["fps"] == 25 and meta["kind"] == "photo"
    assert meta["width"] == meta["height"] == 512 and meta["version"] == 1


def test_landmarks_sit_on_the_face(photo_avatar, landmarker):
    _, avatar = photo_avatar
    for index in (0, avatar.frame_count // 2):
        stored = avatar.landmarks[index]
        measured = landmarker.landmarks(avatar.frames[index])
        assert np.abs(stored - measured).mean() < 2.0  # carried landmarks agree with a fresh detection
    lm = avatar.landmarks[0]
    # The astronaut's face (not the badge on her suit) and its anatomy in order.
    assert 170 < lm[:, 0].min() and lm[:, 0].max() < 280 and 70 < lm[:, 1].min() and lm[:, 1].max() < 200
    eyes, nose, mouth, chin = lm[36:48, 1].mean(), lm[33, 1], lm[48:68, 1].mean(), lm[8, 1]
    assert eyes < nose < mouth < chin


def test_boxes_follow_musetalks_rule(photo_avatar):
    _, avatar = photo_avatar
    for lm, box, crop in zip(avatar.landmarks, avatar.face_boxes, avatar.crop_boxes):
        half = lm[:, 1].max() - lm[29, 1]
        assert box[0] == int(np.floor(lm[:, 0].min())) and box[2] == int(np.ceil(lm[:, 0].max()))
        assert box[1] == int(np.floor(lm[29, 1] - half))
        assert box[3] == int(np.ceil(lm[:, 1].max())) + 10
        side = int(max(box[2] - box[0], box[3] - box[1]) // 2 * 1.5)
        assert crop[2] - crop[0] == crop[3] - crop[1] == 2 * side
        assert (crop[0] + crop[2]) // 2 == (box[0] + box[2]) // 2
    lm = avatar.landmarks[0]
    shifted = face_box(lm, (512, 512), bbox_shift=6)
    assert shifted[1] - face_box(lm, (512, 512))[1] in (11, 12, 13)  # the top moves by twice the shift
    edge = face_box(lm - [0, 80], (512, 512), extra_margin=10)
    assert edge[1] == 0  # clamped to the image
    assert crop_box(np.array([10, 20, 50, 100])).tolist() == [-30, 0, 90, 120]  # may leave the image


def test_masks_cover_the_lower_face_only(photo_avatar):
    _, avatar = photo_avatar
    for lm, crop, mask in zip(avatar.landmarks[::10], avatar.crop_boxes[::10], avatar.masks[::10]):
        side = crop[2] - crop[0]
        assert mask.shape == (side, side)
        local = lm - crop[:2]
        mouth = np.round(local[[62, 66]].mean(0)).astype(int)
        assert mask[mouth[1], mouth[0]] == 255
        chin = np.round(local[8]).astype(int)
        assert mask[chin[1] - 2, chin[0]] == 255
        eye = np.round(local[36:42].mean(0)).astype(int)
        assert mask[eye[1], eye[0]] == 0
        assert not mask[: int(side * 0.4)].any()  # upper half zeroed (blur may leak a little past the middle)
        assert mask[0, 0] == mask[-1, -1] == 0
        assert ((mask > 0) & (mask < 255)).sum() > side  # feathered edge


def test_idle_loop_moves_blinks_and_turns_smoothly(photo_avatar):
    _, avatar = photo_avatar
    frames = avatar.frames.astype(np.int16)
    steps = np.array([np.abs(frames[i + 1] - frames[i]).mean() for i in range(len(frames) - 1)])
    assert np.abs(frames - frames[0]).mean(axis=(1, 2, 3)).max() > 0.3, "the photo does not move"
    # Ping-pong playback turns at both ends: motion slows to (almost) nothing there.
    assert steps[0] < 0.5 * steps.max() and steps[-1] < 0.5 * steps.max()
    lm = avatar.landmarks
    opening = (lm[:, [41, 40, 47, 46], 1] - lm[:, [37, 38, 43, 44], 1]).mean(1)
    assert opening.min() < 0.3 * opening.max(), "no blink"
    closed = int(np.argmin(opening))
    for top_left, bottom_right in ((37, 40), (43, 46)):  # the iris between the open lids
        x1, y1 = np.round(lm[0, top_left]).astype(int)
        x2, y2 = np.round(lm[0, bottom_right]).astype(int)
        eye_closed = avatar.frames[closed, y1 + 1 : y2, x1 : x2 + 1].mean()
        eye_open = avatar.frames[0, y1 + 1 : y2, x1 : x2 + 1].mean()
        assert eye_closed > eye_open + 25, "the lid does not cover the (darker) eye"


def write_video(path, frames, fps=25):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "16"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))


def test_video_with_faceless_frames(tmp_path, landmarker):
    photo = default_photo()
    frames = []
    for index in range(10):
        shift = np.float32([[1, 0, 3 * index], [0, 1, 0]])
        frame = cv2.warpAffine(photo, shift, (512, 512), borderMode=cv2.BORDER_REPLICATE)
        if index in (4, 5):
            cv2.rectangle(frame, (150, 50), (320, 220), (128, 128, 128), -1)  # face hidden
        frames.append(frame)
    video = tmp_path / "clip.mp4"
    write_video(video, frames)
    code = genavatar.main(["--video", str(video), "--avatar_id", "clip", "--data-dir", str(tmp_path)])
    assert code == 0
    avatar = load_avatar(tmp_path / "avatars" / "clip")
    assert avatar.frame_count == 10
    assert avatar.metadata["faces_interpolated"] == 2 and avatar.metadata["faces_detected"] == 8
    nose_x = avatar.landmarks[:, 33, 0]
    assert np.allclose(np.diff(nose_x), 3.0, atol=1.0), nose_x  # the face is tracked, gaps interpolated


@pytest.mark.parametrize("make, message", [
    (lambda d: cv2.imwrite(str(d / "wall.png"), np.full((300, 300, 3), 120, np.uint8)) and d / "wall.png",
     "no face found"),
    (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", "cannot read the image"),
    (lambda d: d / "missing.jpg", "does not exist"),
])
def test_bad_images_are_refused(tmp_path, caplog, make, message):
    path = make(tmp_path)
    code = genavatar.main(["--image", str(path), "--avatar_id", "bad", "--data-dir", str(tmp_path)])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "avatars" / "bad").exists()


def test_bad_video_and_ids_are_refused(tmp_path, caplog):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 1000)
    assert genavatar.main(["--video", str(clip), "--avatar_id", "bad", "--data-dir", str(tmp_path)]) == 2
    assert "cannot read video" in caplog.text
    for bad_id in ("../escape", "a/b", "", ".hidden"):
        assert genavatar.main(["--default", "--avatar_id", bad_id, "--data-dir", str(tmp_path / "d")]) == 2
    assert "invalid avatar id" in caplog.text
    assert not (tmp_path / "escape").exists() and not (tmp_path / "d").exists()
    with pytest.raises(FaceError, match="no face"):
        build_avatar(tmp_path / "x", PrepareOptions(), image=np.zeros((200, 200, 3), np.uint8))
    with pytest.raises(AvatarError, match="unknown model"):
        build_avatar(tmp_path / "x", PrepareOptions(model="wav2lip"), image=default_photo())
