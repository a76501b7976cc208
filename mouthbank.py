"""Real mouths for video avatars: the video's own mouths, indexed by shape, shown per frame.

Preparation (genavatar, video avatars): every frame's mouth region is cut out
in a face-aligned frame (origin at the nose tip, axes along and down the eye
line, scaled by the distance between the eyes, so head motion and distance
cancel out) and indexed by four landmark measures of its shape, all in
eye-distance units: mouth width, inner-lip gap, outer-lip height and how far
the lower lip sits below the nose (the jaw). They are saved in mouths.npz.

Run time (`MouthRetriever`, one per session): the rig predicts where the
wanted `MouthShape` would put the lip landmarks of the current frame; the two
indexed mouths closest to that shape are blended, mixed with the previous
frame's mouth (temporal smoothing), colour-matched to the current frame on a
ring around the mouth and pasted over the rig's warp (which still moves the
jaw and chin) with a feathered mask. A wanted shape that the video never
showed (farther than MAX_DISTANCE from every indexed mouth) falls back to
the warp with its painted cavity. Photo avatars have no bank: they keep the warp.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facegeom import LEFT_EYE, NOSE_TIP, RIGHT_EYE, smoothstep

logger = logging.getLogger(__name__)

MOUTHS_FILE = "mouths.npz"
PATCH_W, PATCH_H = 96, 80
SPAN_U = (-0.8, 0.8)  # patch extent along the eye line, in eye distances from the nose tip
SPAN_V = (0.1, 1.25)  # and down the face
FEATURE_WEIGHTS = np.array([1.0, 2.0, 1.0, 1.0], np.float32)  # width, inner gap, outer height, lower lip
MAX_DISTANCE = 0.08  # in weighted eye-distance units: farther than this, the video has no such mouth
TEMPORAL_KEEP = 0.35  # share of the previous frame's mouth in this frame's
MASK_GROW = 0.12  # the paste mask reaches this far (eye distances) beyond the lips
MAX_BANK = 400


@dataclass(frozen=True)
class FaceFrame:
    """The face-aligned coordinate frame of one image: origin, unit axes, scale."""

    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    scale: float

    @staticmethod
    def of(landmarks: np.ndarray) -> "FaceFrame":
        left, right = landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)
        scale = max(float(np.linalg.norm(right - left)), 1.0)
        ex = (right - left) / scale
        ey = np.array([-ex[1], ex[0]], np.float32)
        return FaceFrame(landmarks[NOSE_TIP].astype(np.float32), ex.astype(np.float32), ey, scale)

    def local(self, points: np.ndarray) -> np.ndarray:
        rel = points - self.origin
        return np.stack([rel @ self.ex, rel @ self.ey], axis=-1) / self.scale

    def patch_to_image(self) -> np.ndarray:
        """2x3 affine: patch pixel (x, y) -> image point."""
        su = (SPAN_U[1] - SPAN_U[0]) * self.scale / PATCH_W
        sv = (SPAN_V[1] - SPAN_V[0]) * self.scale / PATCH_H
        start = self.origin + (SPAN_U[0] * self.ex + SPAN_V[0] * self.ey) * self.scale
        return np.array([[self.ex[0] * su, self.ey[0] * sv, start[0]],
                         [self.ex[1] * su, self.ey[1] * sv, start[1]]], np.float32)

    def to_patch(self, points: np.ndarray) -> np.ndarray:
        local = self.local(points)
        return np.stack([(local[:, 0] - SPAN_U[0]) / (SPAN_U[1] - SPAN_U[0]) * PATCH_W,
                         (local[:, 1] - SPAN_V[0]) / (SPAN_V[1] - SPAN_V[0]) * PATCH_H], axis=1)


def mouth_features(landmarks: np.ndarray) -> np.ndarray:
    """Width, inner gap, outer height and lower-lip depth below the nose, in eye distances."""
    local = FaceFrame.of(landmarks).local(landmarks)
    width = float(np.linalg.norm(local[54] - local[48]))
    gap = float(np.mean(local[[65, 66, 67], 1] - local[[63, 62, 61], 1]))
    height = float(local[57, 1] - local[51, 1])
    return np.array([width, max(gap, 0.0), height, float(local[57, 1])], np.float32)


def cut_patch(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    affine = FaceFrame.of(landmarks).patch_to_image()
    return cv2.warpAffine(frame, affine, (PATCH_W, PATCH_H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def lip_mask(patch_points: np.ndarray) -> np.ndarray:
    """float32 patch-sized mask: the outer lips, grown and feathered."""
    mask = np.zeros((PATCH_H, PATCH_W), np.uint8)
    cv2.fillPoly(mask, [np.round(patch_points[48:60] * 8).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=3)
    grow = max(1, int(MASK_GROW * PATCH_W / (SPAN_U[1] - SPAN_U[0])))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    blur = 2 * grow + 1
    return cv2.GaussianBlur(mask, (blur, blur), 0).astype(np.float32) / 255.0


@dataclass(frozen=True)
class MouthBank:
    """The indexed mouths of one video avatar."""

    patches: np.ndarray  # (N, PATCH_H, PATCH_W, 3) uint8, face-aligned
    features: np.ndarray  # (N, 4) float32
    points: np.ndarray  # (N, 68, 2) float32 landmarks in patch pixels

    @staticmethod
    def build(frames: list[np.ndarray], landmarks: np.ndarray) -> "MouthBank":
        features = np.stack([mouth_features(lm) for lm in landmarks])
        keep = _diverse(features, MAX_BANK)
        patches = np.stack([cut_patch(frames[i], landmarks[i]) for i in keep])
        points = np.stack([FaceFrame.of(landmarks[i]).to_patch(landmarks[i]) for i in keep]).astype(np.float32)
        return MouthBank(patches, features[keep], points)

    def save(self, folder: Path) -> None:
        np.savez_compressed(folder / MOUTHS_FILE, patches=self.patches, features=self.features, points=self.points)

    @staticmethod
    def load(folder: Path) -> "MouthBank | None":
        path = folder / MOUTHS_FILE
        if not path.is_file():
            return None
        with np.load(path) as data:
            return MouthBank(data["patches"], data["features"], data["points"])

    def nearest(self, wanted: np.ndarray, count: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Indices and weighted distances of the `count` closest mouths."""
        distance = np.sqrt((((self.features - wanted) * FEATURE_WEIGHTS) ** 2).sum(1))
        order = np.argsort(distance)[:count]
        return order, distance[order]


def _diverse(features: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` frame indices spread over the shape space (farthest-point sampling)."""
    if len(features) <= limit:
        return np.arange(len(features))
    chosen = [int(np.argmin(features[:, 1]))]
    distance = np.full(len(features), np.inf)
    for _ in range(limit - 1):
        distance = np.minimum(distance, (((features - features[chosen[-1]]) * FEATURE_WEIGHTS) ** 2).sum(1))
        chosen.append(int(np.argmax(distance)))
    return np.array(sorted(chosen))


class MouthRetriever:
    """Per session: pastes the closest real mouth into each rendered frame."""

    def __init__(self, bank: MouthBank):
        self.bank = bank
        self._previous: np.ndarray | None = None
        self.last_choice: int | None = None  # bank index mostly shown in the last frame (None: the warp)

    def reset(self) -> None:
        self._previous = None
        self.last_choice = None

    def choose(self, moved_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The real mouth (face-aligned patch, its landmarks in patch pixels) closest to the
        shape `moved_landmarks` show, blended and smoothed; None when the video has none like it."""
        wanted = mouth_features(moved_landmarks)
        order, distance = self.bank.nearest(wanted)
        if distance[0] > MAX_DISTANCE:
            self.reset()
            return None
        weights = 1.0 / (distance + 1e-3)
        weights /= weights.sum()
        patch = sum(w * self.bank.patches[i].astype(np.float32) for i, w in zip(order, weights))
        if self._previous is not None:
            patch = (1 - TEMPORAL_KEEP) * patch + TEMPORAL_KEEP * self._previous
        self._previous = patch
        self.last_choice = int(order[0])
        return patch, self.bank.points[order[0]]

    @staticmethod
    def paste(image: np.ndarray, rest_landmarks: np.ndarray, patch: np.ndarray, points: np.ndarray) -> None:
        """Paste a chosen mouth into `image` (in place), colour-matched, over this frame's own mouth."""
        frame = FaceFrame.of(rest_landmarks)
        affine = frame.patch_to_image()
        here = cv2.warpAffine(image, affine, (PATCH_W, PATCH_H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        mask = np.maximum(lip_mask(points), lip_mask(frame.to_patch(rest_landmarks)))
        ring = (mask > 0.05) & (mask < 0.6)
        if ring.any():  # colour match: the bank mouth's surroundings take this frame's colour
            gain = (here[ring].mean(0) + 1.0) / (patch[ring].mean(0) + 1.0)
            patch = patch * np.clip(gain, 0.7, 1.4)
        _paste_patch(image, here + mask[..., None] * (patch - here), mask, affine)


def _paste_patch(image: np.ndarray, patch: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    """Warp a face-aligned patch back into the image where its mask is non-zero."""
    corners = np.array([[0, 0, 1], [PATCH_W, 0, 1], [0, PATCH_H, 1], [PATCH_W, PATCH_H, 1]], np.float32) @ affine.T
    height, width = image.shape[:2]
    x1, y1 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x2, y2 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [width, height])
    if x2 <= x1 or y2 <= y1:
        return
    shifted = affine.copy()
    shifted[:, 2] -= [x1, y1]
    size = (int(x2 - x1), int(y2 - y1))
    colour = cv2.warpAffine(patch, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    region = image[y1:y2, x1:x2].astype(np.float32)
    region += alpha * (colour - region)
    image[y1:y2, x1:x2] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
