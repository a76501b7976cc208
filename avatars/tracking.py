"""Face tracking and geometry: landmarks per frame, MuseTalk's boxes and the blend masks.

The library half of avatar preparation: genavatar.py (the command) and LiveTalking
folders (avatars/livetalking.py) both use it; the running server never imports the command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from avatars.facegeom import (DEFAULT_EXTRA_MARGIN, FaceError, FaceLandmarker, crop_box, extra_margin_for, face_box,
                              landmark_box)
from avatars.facemask import lower_face_mask, parsing_mode_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceData:
    """Per-frame face geometry, in the layout avatar.py reads."""

    landmarks: np.ndarray  # (N, 68, 2) float32
    face_boxes: np.ndarray  # (N, 4) int32
    crop_boxes: np.ndarray  # (N, 4) int32
    masks: list[np.ndarray]  # crop-box sized uint8


class Progress:
    """Reports preparation progress 0-100 (for HTTP avatar tasks) beside the tqdm bars.

    Each stage owns a span of the whole: `track` walks an iterable with a tqdm
    bar and reports the fraction done mapped into [start, end].
    """

    def __init__(self, report: Callable[[float], None] | None = None):
        self.report = report

    def track(self, items, desc: str, start: float, end: float, total: int | None = None):
        total = total if total is not None else len(items)
        for done, item in enumerate(tqdm(items, desc=desc, unit="frame", total=total), 1):
            yield item
            self.set(start + (end - start) * done / max(total, 1))

    def set(self, percent: float) -> None:
        if self.report is not None:
            self.report(min(100.0, percent))


NO_PROGRESS = Progress()


def interpolate_missing(found: list[np.ndarray | None]) -> np.ndarray:
    """Fill frames without a face from their neighbours (linear in time; nearest at the ends)."""
    known = [i for i, lm in enumerate(found) if lm is not None]
    stacked = np.stack([found[i] for i in known]).reshape(len(known), -1)
    filled = np.empty((len(found), stacked.shape[1]), np.float32)
    for column in range(stacked.shape[1]):
        filled[:, column] = np.interp(np.arange(len(found)), known, stacked[:, column])
    return filled.reshape(len(found), 68, 2)


def smooth_track(landmarks: np.ndarray) -> np.ndarray:
    """Light temporal smoothing of a video's landmarks (dlib jitters by a pixel or so)."""
    if len(landmarks) < 3:
        return landmarks
    padded = np.concatenate([landmarks[:1], landmarks, landmarks[-1:]])
    return (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).astype(np.float32)


def expanded_crop(frame: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """The crop box's pixels; parts outside the frame are black (as MuseTalk's PIL crop)."""
    x1, y1, x2, y2 = (int(v) for v in crop)
    height, width = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), frame.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return out


def face_geometry(frames: list[np.ndarray], landmarks: np.ndarray, version: str = "v15",
                  extra_margin: int = DEFAULT_EXTRA_MARGIN, bbox_shift: int = 0, parser=None, progress: Progress = NO_PROGRESS, span: tuple[float, float] = (0, 0)) -> FaceData:
    """Per frame: MuseTalk's face box and crop box for `version` (v15 or v1; `extra_margin` is v1.5's,
    `bbox_shift` v1.0's), and the blend mask
    (from `parser`, a faceparse.FaceParser, when given; else from the landmarks)."""
    if version not in ("v15", "v1"):
        raise ValueError(f"geometry version must be v15 or v1, not {version!r}")
    margin = extra_margin_for(version, extra_margin)
    shift = bbox_shift if version == "v1" else 0
    mode = parsing_mode_for(version)
    face_boxes, crop_boxes, masks = [], [], []
    source = "face parsing" if parser is not None else "landmark"
    for frame, points in progress.track(list(zip(frames, landmarks)), f"{source} masks", *span):
        box = face_box(points, frame.shape, shift, margin)
        crop = crop_box(box)
        labels = parser.parse(expanded_crop(frame, crop)) if parser is not None else None
        face_boxes.append(box)
        crop_boxes.append(crop)
        masks.append(lower_face_mask(points, box, crop, mode, labels))
    return FaceData(landmarks.astype(np.float32), np.stack(face_boxes), np.stack(crop_boxes), masks)


def track_faces(frames: list[np.ndarray], landmarker: FaceLandmarker, source: str,
                progress: Progress = NO_PROGRESS, span: tuple[float, float] = (0, 0)) -> tuple[np.ndarray, int]:
    """Landmarks for every frame and how many frames needed interpolation."""
    found: list[np.ndarray | None] = []
    near = None
    for frame in progress.track(frames, "finding faces", *span):
        points = landmarker.landmarks(frame, near=near)
        found.append(points)
        if points is not None:
            near = landmark_box(points)
    missing = sum(lm is None for lm in found)
    if missing == len(found):
        raise FaceError(
            f"no face found in {source}: use a photo or video with one clearly visible, roughly frontal face "
            f"at least 80 px wide"
        )
    if missing:
        logger.warning("no face in %d of %d frames: their landmarks are interpolated from neighbouring frames",
                       missing, len(found))
    return smooth_track(interpolate_missing(found)), missing
