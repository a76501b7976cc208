"""The avatar folder format under data/avatars/<id>/ (documented in data/avatars/README.md).

An avatar is read once per process and shared read-only by every session that
uses it (numpy arrays are marked non-writeable so a session cannot corrupt
another's frames).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sync.once import OnceCache

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


def read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def array_bytes(value: object, depth: int = 2) -> int:
    """Bytes of the numpy arrays a value holds: itself, its attributes, items of its lists/tuples/dicts
    (two levels deep; an estimate for sizing caches, not an exact count)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if depth == 0:
        return 0
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "__dict__"):
        items = list(vars(value).values())
    else:
        return 0
    return sum(array_bytes(item, depth - 1) for item in items)


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
    derived: OnceCache = field(default_factory=lambda: OnceCache(name="derived data", size_of=array_bytes),
                               compare=False, repr=False)

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory its arrays take, derived data (rigs, mouth banks) included as far as they hold arrays."""
        arrays = [self.frames, self.landmarks, self.face_boxes, self.crop_boxes, *(self.masks or ())]
        return sum(a.nbytes for a in arrays if a is not None) + self.derived.nbytes()

    @property
    def has_face_data(self) -> bool:
        return self.landmarks is not None and self.crop_boxes is not None and self.masks is not None


def read_avatar_folder(folder: Path) -> Avatar:
    """Read an avatar folder written by genavatar.py (blocking: call off the event loop)."""
    meta_file = folder / METADATA_FILE
    if not meta_file.is_file():
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
    stacked = read_only(np.stack(frames))

    optional: dict = {}
    if (folder / LANDMARKS_FILE).is_file():
        optional["landmarks"] = read_only(np.load(folder / LANDMARKS_FILE))
        optional["face_boxes"] = read_only(np.load(folder / FACE_BOXES_FILE))
        optional["crop_boxes"] = read_only(np.load(folder / CROP_BOXES_FILE))
        masks = []
        for index in range(count):
            mask = cv2.imread(str(mask_path(folder, index)), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise AvatarError(f"avatar {folder.name}: mask {index} is missing or unreadable")
            masks.append(read_only(mask))
        optional["masks"] = tuple(masks)
    logger.info("loaded avatar %s: %d frames %dx%d", folder.name, count, stacked.shape[2], stacked.shape[1])
    return Avatar(avatar_id=folder.name, folder=folder, metadata=metadata, frames=stacked, **optional)
