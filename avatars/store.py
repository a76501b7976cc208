"""Prepared avatars: the on-disk format under data/avatars/<id>/ and a shared cache.

An avatar is read once per process and shared read-only by every session that
uses it (numpy arrays are marked non-writeable so a session cannot corrupt
another's frames). The format is documented in data/avatars/README.md.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

AVATAR_FORMAT_VERSION = 1
AVATAR_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # matched whole (fullmatch)
METADATA_FILE = "avatar.json"
FRAMES_DIR = "frames"
MASKS_DIR = "masks"
LANDMARKS_FILE = "landmarks.npy"
FACE_BOXES_FILE = "face_boxes.npy"
CROP_BOXES_FILE = "crop_boxes.npy"


class AvatarError(Exception):
    """An avatar is missing or malformed; the message says what to do."""


def check_avatar_id(avatar_id: object) -> str:
    """Return avatar_id if it is a safe folder name, else raise AvatarError.

    Only letters, digits, '_', '-' and '.' (not leading) are allowed, so an id
    can never climb out of data/avatars/.
    """
    if not isinstance(avatar_id, str) or not AVATAR_ID_PATTERN.fullmatch(avatar_id) or ".." in avatar_id:
        raise AvatarError(
            f"invalid avatar id {avatar_id!r}: use 1-64 letters, digits, '_', '-' or '.'"
        )
    return avatar_id


def frame_path(folder: Path, index: int) -> Path:
    return folder / FRAMES_DIR / f"{index:06d}.png"


def mask_path(folder: Path, index: int) -> Path:
    return folder / MASKS_DIR / f"{index:06d}.png"


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Avatar:
    """One prepared avatar, immutable and shared between sessions.

    frames: (N, H, W, 3) uint8 BGR. The optional face data (landmarks, boxes,
    masks) is present when genavatar ran face preparation; engines that need
    it check `has_face_data`.
    """

    avatar_id: str
    folder: Path
    metadata: dict
    frames: np.ndarray
    landmarks: np.ndarray | None = None
    face_boxes: np.ndarray | None = None
    crop_boxes: np.ndarray | None = None
    masks: tuple[np.ndarray, ...] | None = None
    extras: dict = field(default_factory=dict)

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @property
    def has_face_data(self) -> bool:
        return self.landmarks is not None and self.crop_boxes is not None and self.masks is not None


def is_avatar_folder(folder: Path) -> bool:
    """A folder genavatar.py wrote, or one in LiveTalking's layout (their index file not a symlink)."""
    from avatars.livetalking import COORDS_FILE, livetalking_kind

    meta = folder / METADATA_FILE
    if meta.is_file():
        return not meta.is_symlink()
    return livetalking_kind(folder) is not None and not (folder / COORDS_FILE).is_symlink()


def load_avatar(folder: Path) -> Avatar:
    """Read an avatar folder written by genavatar.py or LiveTalking (blocking: call off the event loop)."""
    meta_file = folder / METADATA_FILE
    if not meta_file.is_file():
        from avatars.livetalking import livetalking_kind, load_livetalking

        if livetalking_kind(folder) is not None:
            return load_livetalking(folder)
        raise AvatarError(
            f"avatar folder {folder} has no {METADATA_FILE}: build it with "
            f"`python genavatar.py --image PHOTO --avatar_id {folder.name}`"
        )
    metadata = json.loads(meta_file.read_text())
    if metadata.get("version") != AVATAR_FORMAT_VERSION:
        raise AvatarError(
            f"avatar {folder.name} has format version {metadata.get('version')}, "
            f"this server reads {AVATAR_FORMAT_VERSION}: rebuild it with genavatar.py"
        )
    count = int(metadata["frame_count"])
    frames = []
    for index in range(count):
        image = cv2.imread(str(frame_path(folder, index)), cv2.IMREAD_COLOR)
        if image is None:
            raise AvatarError(f"avatar {folder.name}: frame {index} is missing or unreadable")
        frames.append(image)
    stacked = _read_only(np.stack(frames))

    optional: dict = {}
    if (folder / LANDMARKS_FILE).is_file():
        optional["landmarks"] = _read_only(np.load(folder / LANDMARKS_FILE))
        optional["face_boxes"] = _read_only(np.load(folder / FACE_BOXES_FILE))
        optional["crop_boxes"] = _read_only(np.load(folder / CROP_BOXES_FILE))
        masks = []
        for index in range(count):
            mask = cv2.imread(str(mask_path(folder, index)), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise AvatarError(f"avatar {folder.name}: mask {index} is missing or unreadable")
            masks.append(_read_only(mask))
        optional["masks"] = tuple(masks)
    logger.info("loaded avatar %s: %d frames %dx%d", folder.name, count, stacked.shape[2], stacked.shape[1])
    return Avatar(avatar_id=folder.name, folder=folder, metadata=metadata, frames=stacked, **optional)


class AvatarStore:
    """Loads avatars by id from one root folder and caches them for the process.

    Thread-safe: concurrent sessions asking for the same id share one load.
    """

    def __init__(self, root: Path, max_cached: int = 8):
        self.root = root
        self.max_cached = max_cached
        self._cache: dict[tuple[str, bool], Avatar] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, bool], threading.Lock] = {}

    def folder(self, avatar_id: str) -> Path | None:
        """The avatar's folder if it is a real folder inside the root (a symlink, or anything that
        resolves outside data/, is refused: the data folder is all a client may reach)."""
        check_avatar_id(avatar_id)
        folder = self.root / avatar_id
        if folder.is_symlink() or not folder.is_dir():
            return None
        if not folder.resolve().is_relative_to(self.root.resolve()):
            return None
        return folder if is_avatar_folder(folder) else None

    def exists(self, avatar_id: str) -> bool:
        return self.folder(avatar_id) is not None

    def available(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if AVATAR_ID_PATTERN.fullmatch(p.name) and self.folder(p.name) is not None)

    def forget(self, avatar_id: str) -> None:
        """Drop a cached avatar whose folder was rebuilt; sessions using it keep their copy."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == avatar_id]:
                del self._cache[key]

    def get(self, avatar_id: str, landmarks: bool = False) -> Avatar:
        """The avatar, loaded once. `landmarks`: an engine needs 68 landmarks per frame, which a
        LiveTalking folder lacks; they are then computed once (slow, cached on disk)."""
        check_avatar_id(avatar_id)
        key = (avatar_id, landmarks)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            folder = self.folder(avatar_id)
            if folder is None:
                known = ", ".join(self.available()) or "none"
                raise AvatarError(f"unknown avatar {avatar_id!r} (available: {known})")
            avatar = load_avatar(folder)
            if landmarks and avatar.landmarks is None and str(avatar.metadata.get("format", "")).startswith("livetalking"):
                from avatars.livetalking import with_landmarks

                avatar = with_landmarks(avatar)
            with self._lock:
                if len(self._cache) >= self.max_cached:
                    evicted = next(iter(self._cache))
                    del self._cache[evicted]
                    logger.info("avatar cache full: evicted %s", evicted[0])
                self._cache[key] = avatar
                self._loading.pop(key, None)
            return avatar
