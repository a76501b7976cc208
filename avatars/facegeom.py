"""Face geometry shared by avatar preparation and the engines.

68-point landmarks (dlib / iBUG order) come from dlib's frontal face detector
and the shape predictor shipped inside the `face-recognition-models` wheel, so
preparation works offline. The face box follows MuseTalk's rule and the crop
box is its 1.5x square expansion; the blend mask is facemask.py's.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np

from avatars.format import AvatarError

logger = logging.getLogger(__name__)

NOSE_BRIDGE = 29  # MuseTalk's vertical midpoint of the face box
NOSE_TIP = 33
CHIN = 8
JAW = slice(0, 17)
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
CROP_EXPAND = 1.5
DEFAULT_EXTRA_MARGIN = 10  # px below the chin, MuseTalk v1.5 only
DETECT_MAX_SIDE = 640  # faces are found on a copy at most this big (dlib's detector is the slow part)
MIN_FACE_PX = 80
NEAR_OVERLAP = 0.2  # dlib's detector misses faces smaller than this unless the image is upsampled


class FaceError(AvatarError):
    """No usable face; the message says what to do."""


def predictor_path() -> Path:
    """The 68-point model inside face-recognition-models.

    The package's own `pose_predictor_model_location()` imports pkg_resources,
    which recent setuptools no longer ships, so the file is located directly.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceError("face landmarks need the face-recognition-models package: pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FaceError(f"{path} is missing: reinstall face-recognition-models")
    return path


class FaceLandmarker:
    """Finds the most confident face in an image and returns its 68 landmarks."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))

    def detect(self, image_bgr: np.ndarray, near: tuple[int, int, int, int] | None = None
               ) -> tuple[int, int, int, int] | None:
        """The most confident face rectangle (x1, y1, x2, y2), or None.

        With `near` (the face in the previous video frame) only faces overlapping
        it count, so a hidden face is reported missing instead of jumping to
        another face-like thing in the picture.
        """
        height, width = image_bgr.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        small = image_bgr if scale == 1.0 else cv2.resize(image_bgr, None, fx=scale, fy=scale,
                                                           interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        upsample = 1 if min(small.shape[:2]) < 4 * MIN_FACE_PX else 0
        rects, scores, _ = self._detector.run(rgb, upsample, 0.0)
        boxes = [tuple(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())) for r in rects]
        candidates = [i for i in range(len(boxes)) if near is None or overlap(boxes[i], near) > NEAR_OVERLAP]
        if not candidates:
            return None
        return boxes[max(candidates, key=lambda i: scores[i])]

    def landmarks(self, image_bgr: np.ndarray, box: tuple[int, int, int, int] | None = None,
                  near: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """(68, 2) float32 landmarks of the best face (or of the face in `box`), None if no face."""
        if box is None:
            box = self.detect(image_bgr, near)
            if box is None:
                return None
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        shape = self._predictor(rgb, self._dlib.rectangle(*box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def landmark_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    x1, y1 = np.floor(landmarks.min(0)).astype(int)
    x2, y2 = np.ceil(landmarks.max(0)).astype(int)
    return int(x1), int(y1), int(x2), int(y2)


def extra_margin_for(version: str, extra_margin: int) -> int:
    """MuseTalk adds the margin below the chin for v1.5 only (its training crops had one)."""
    return extra_margin if version == "v15" else 0


def face_box(landmarks: np.ndarray, frame_shape: tuple[int, ...], bbox_shift: int = 0,
             extra_margin: int = DEFAULT_EXTRA_MARGIN) -> np.ndarray:
    """MuseTalk's box: x from the landmarks, the nose bridge (29, shifted by bbox_shift)
    as the vertical middle, bottom at the lowest landmark plus extra_margin; clamped."""
    height, width = frame_shape[:2]
    xs, ys = landmarks[:, 0], landmarks[:, 1]
    mid = float(landmarks[NOSE_BRIDGE, 1]) + bbox_shift
    bottom = float(ys.max())
    x1, x2 = int(max(0, np.floor(xs.min()))), int(min(width, np.ceil(xs.max())))
    y1 = int(max(0, np.floor(mid - (bottom - mid))))
    y2 = int(min(height, np.ceil(bottom) + extra_margin))
    return np.array([x1, y1, x2, y2], np.int32)


def crop_box(box: np.ndarray) -> np.ndarray:
    """The square, 1.5x expanded box around a face box (may extend past the image)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) // 2 * CROP_EXPAND)
    return np.array([cx - half, cy - half, cx + half, cy + half], np.int32)


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the eye line (ex, to the image right) and down the face (ey)."""
    left, right = landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)
    ex = (right - left) / max(float(np.linalg.norm(right - left)), 1e-6)
    ey = np.array([-ex[1], ex[0]], np.float32)
    return ex.astype(np.float32), ey


def to_face_coords(points: np.ndarray, origin: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    rel = points - origin
    return np.stack([rel @ ex, rel @ ey], axis=-1)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
