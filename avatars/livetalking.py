"""LiveTalking avatar folders, read as they are.

LiveTalking writes two layouts under data/avatars/<id>/:

- musetalk: full_imgs/<n>.png, mask/<n>.png (crop-box sized blend masks),
  coords.pkl (face boxes x1, y1, x2, y2), mask_coords.pkl (crop boxes),
  latents.pt (a list of (1, 8, 32, 32) tensors), avator_info.json;
- wav2lip: full_imgs/<n>.png, face_imgs/<n>.png, coords.pkl (boxes y1, y2, x1, x2).

Both load into an `Avatar` without conversion. Their pickles are untrusted and
go through safepickle. MuseTalk uses the folder's own boxes, masks and latents;
the lite engine needs 68 landmarks per frame, which `with_landmarks` computes
once (dlib, with a progress bar) and caches beside the frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from avatars import safepickle
from avatars.format import Avatar, AvatarError, read_only
from avatars.tracking import face_geometry, track_faces

logger = logging.getLogger(__name__)

FULL_IMGS = "full_imgs"
FACE_IMGS = "face_imgs"
MASK_DIR = "mask"
COORDS_FILE = "coords.pkl"
MASK_COORDS_FILE = "mask_coords.pkl"
LATENTS_FILE = "latents.pt"
INFO_FILE = "avator_info.json"  # sic: LiveTalking's spelling
LANDMARKS_CACHE = "lite_landmarks.npz"
MUSETALK = "livetalking-musetalk"
WAV2LIP = "livetalking-wav2lip"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_INFO_BYTES = 64 * 1024


def livetalking_kind(folder: Path) -> str | None:
    """MUSETALK or WAV2LIP when `folder` is laid out as LiveTalking writes it, else None."""
    if not (folder / FULL_IMGS).is_dir() or not (folder / COORDS_FILE).is_file():
        return None
    if (folder / MASK_DIR).is_dir() and (folder / MASK_COORDS_FILE).is_file():
        return MUSETALK
    if (folder / FACE_IMGS).is_dir():
        return WAV2LIP
    return None


def numbered_images(folder: Path) -> list[Path]:
    """Image files named <integer>.png/.jpg, in numeric order (LiveTalking's naming)."""
    if not folder.is_dir():
        raise AvatarError(f"{folder} is not a folder of frames")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit()]
    if not files:
        raise AvatarError(f"{folder} holds no frames named like 00000000.png")
    return sorted(files, key=lambda p: int(p.stem))


def read_images(files: list[Path], flags: int = cv2.IMREAD_COLOR) -> list[np.ndarray]:
    images = []
    for path in files:
        image = cv2.imread(str(path), flags)
        if image is None:
            raise AvatarError(f"cannot read image {path}")
        images.append(image)
    return images


def read_boxes(path: Path, count: int) -> np.ndarray:
    """A pickled list of 4-number boxes, one per frame, as an (N, 4) int32 array."""
    try:
        value = safepickle.load(path)
    except safepickle.UnsafePickle as exc:
        raise AvatarError(f"refusing {path}: {exc}") from None
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise AvatarError(f"{path} does not hold a list of 4-number boxes") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise AvatarError(f"{path} does not hold a list of 4-number boxes (shape {boxes.shape})")
    if len(boxes) != count:
        raise AvatarError(f"{path} has {len(boxes)} boxes for {count} frames in {FULL_IMGS}/")
    return np.round(boxes).astype(np.int32)


def read_info(folder: Path) -> dict:
    path = folder / INFO_FILE
    if not path.is_file() or path.stat().st_size > MAX_INFO_BYTES:
        return {}
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("ignoring unreadable %s", path)
        return {}
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float))} if isinstance(info, dict) else {}


def faceless(boxes: np.ndarray) -> np.ndarray:
    """Indices of frames whose face box is empty (LiveTalking's (0, 0, 0, 0) placeholder)."""
    return np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))


def borrow_nearest(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Replace rows `missing` by the nearest row that is not missing."""
    present = np.setdiff1d(np.arange(len(values)), missing)
    if present.size == 0:
        raise AvatarError("no frame of this avatar has a face box")
    values = values.copy()
    for index in missing:
        values[index] = values[present[np.abs(present - index).argmin()]]
    return values


def fit_mask(mask: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """A mask the size of its crop box (resized when a tool saved it at another size)."""
    width, height = int(crop[2] - crop[0]), int(crop[3] - crop[1])
    if mask.shape[:2] != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    return mask


def load_livetalking(folder: Path) -> Avatar:
    """Read a LiveTalking avatar folder (blocking: call off the event loop)."""
    kind = livetalking_kind(folder)
    if kind is None:
        raise AvatarError(f"{folder} is not a LiveTalking avatar folder ({FULL_IMGS}/ and {COORDS_FILE} missing)")
    frames = read_images(numbered_images(folder / FULL_IMGS))
    if len({frame.shape for frame in frames}) != 1:
        raise AvatarError(f"frames in {folder / FULL_IMGS} differ in size")
    count = len(frames)
    boxes = read_boxes(folder / COORDS_FILE, count)
    if kind == WAV2LIP:
        boxes = boxes[:, [2, 0, 3, 1]]  # wav2lip stores y1, y2, x1, x2
    missing = faceless(boxes)
    boxes = borrow_nearest(boxes, missing)
    crop_boxes = masks = None
    if kind == MUSETALK:
        crop_boxes = borrow_nearest(read_boxes(folder / MASK_COORDS_FILE, count), missing)
        mask_images = read_images(numbered_images(folder / MASK_DIR), cv2.IMREAD_GRAYSCALE)
        if len(mask_images) != count:
            raise AvatarError(f"{folder / MASK_DIR} has {len(mask_images)} masks for {count} frames")
        masks = tuple(read_only(fit_mask(mask, crop)) for mask, crop in zip(mask_images, crop_boxes))
        crop_boxes = read_only(crop_boxes)
    height, width = frames[0].shape[:2]
    metadata = {**read_info(folder), "format": kind, "frame_count": count, "width": width, "height": height,
                "fps": 25, "faceless_frames": missing.tolist(), "has_face_data": kind == MUSETALK}
    logger.info("loaded LiveTalking %s avatar %s: %d frames %dx%d", kind.split("-")[1], folder.name, count,
                width, height)
    return Avatar(avatar_id=folder.name, folder=folder, metadata=metadata, frames=read_only(np.stack(frames)),
                  face_boxes=read_only(boxes), crop_boxes=crop_boxes, masks=masks)


def _fingerprint(folder: Path) -> str:
    """Changes when any frame file is replaced, added or removed."""
    digest = hashlib.sha256()
    for path in numbered_images(folder / FULL_IMGS):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _cached_landmarks(path: Path, fingerprint: str, count: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            landmarks = data["landmarks"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None
    return landmarks if landmarks.shape == (count, 68, 2) else None


def _save_landmarks(path: Path, fingerprint: str, landmarks: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, landmarks=landmarks, fingerprint=np.array(fingerprint))
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot cache landmarks in %s (%s): they will be computed again next start", path, exc)


def with_landmarks(avatar: Avatar, landmarker=None) -> Avatar:
    """The avatar with 68 landmarks and the lite engine's boxes and masks per frame.

    Landmarks are computed once with dlib (progress shown) and cached in
    <folder>/lite_landmarks.npz, keyed by the frame files; later loads read the cache.
    """
    folder = avatar.folder
    fingerprint = _fingerprint(folder)
    cache = folder / LANDMARKS_CACHE
    landmarks = _cached_landmarks(cache, fingerprint, avatar.frame_count)
    if landmarks is None:
        from avatars.facegeom import FaceLandmarker

        logger.info("avatar %s: finding face landmarks in %d frames (once; cached in %s)",
                    avatar.avatar_id, avatar.frame_count, cache.name)
        landmarks, _ = track_faces(list(avatar.frames), landmarker or FaceLandmarker(), str(folder))
        _save_landmarks(cache, fingerprint, landmarks)
    face = face_geometry(list(avatar.frames), landmarks)
    return Avatar(avatar_id=avatar.avatar_id, folder=folder, metadata={**avatar.metadata, "has_face_data": True},
                  frames=avatar.frames, landmarks=read_only(face.landmarks), face_boxes=read_only(face.face_boxes),
                  crop_boxes=read_only(face.crop_boxes), masks=tuple(read_only(m) for m in face.masks))
