"""Real mouths for video avatars: the video's own mouths, indexed by shape, shown per frame.

Preparation (genavatar, video avatars): every frame's mouth region is cut out
in a face-aligned frame (origin at the nose tip, axes along and down the eye
line, scaled by the distance between the eyes, so head motion and distance
cancel out) and indexed by four landmark measures of its shape, all in
eye-distance units: mouth width, inner-lip gap, outer-lip height and how far
the lower lip sits below the nose (the jaw). They are saved in mouths.npz.

Run time (`MouthRetriever`, one per session): the rig predicts how the
wanted `MouthShape` would move the lip landmarks of the current frame; that
movement, applied to the video's most closed mouth, is looked up among the
indexed mouths (with a little hysteresis against flicker), cross-faded with
the previous frame's mouth (temporal smoothing), colour-matched to the current
frame on a ring around it and pasted, lips and teeth, with a feathered mask
into the current frame, whose jaw and chin the rig's warp moves to meet the
real lower lip. A wanted shape that the video never
showed (farther than MAX_DISTANCE from every indexed mouth, or MAX_BEYOND
outside the range of shapes the video covers) falls back to the warp with its
painted cavity. Photo avatars have no bank: they keep the warp.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avatars.facegeom import LEFT_EYE, NOSE_TIP, RIGHT_EYE

logger = logging.getLogger(__name__)

MOUTHS_FILE = "mouths.npz"
PATCH_W, PATCH_H = 96, 80
SPAN_U = (-0.8, 0.8)  # patch extent along the eye line, in eye distances from the nose tip
SPAN_V = (-0.05, 1.25)  # and down the face
FEATURE_WEIGHTS = np.array([1.0, 2.0, 1.0, 1.0], np.float32)  # width, inner gap, outer height, lower lip
MAX_DISTANCE = 0.08  # in weighted eye-distance units: farther than this, the video has no such mouth
# How far speech takes a mouth from its rest, in eye distances: wider when spread, narrower
# when rounded, and the inner gap, outer height and lower-lip drop of a wide-open vowel. The
# rig's range on each frame is mapped onto these, so a video's mouths are chosen by shape.
SPREAD_RANGE = 0.12
ROUND_RANGE = 0.12
OPEN_RANGE = (0.3, 0.3, 0.25)
MAX_BEYOND = 0.2  # nor when the wanted shape lies this far beyond the range the video shows
TEMPORAL_KEEP = 0.25  # share of the previous frame's mouth in this frame's
HYSTERESIS = 0.01  # the mouth shown last frame stays while it is this close to the best
COLOUR_GAIN = (0.9, 1.1)  # the same video: colour only drifts with light, never more
MASK_GROW = 0.1  # the paste mask reaches this far (eye distances) beyond the lips
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
    """float32 patch-sized mask: the outer lips, grown and feathered (teeth and lips; the
    jaw and chin around them follow the rig's warp)."""
    mask = np.zeros((PATCH_H, PATCH_W), np.uint8)
    cv2.fillPoly(mask, [np.round(patch_points[48:60] * 8).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=3)
    grow = max(1, int(MASK_GROW * PATCH_W / (SPAN_U[1] - SPAN_U[0])))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return cv2.GaussianBlur(mask, (2 * grow + 1, 2 * grow + 1), 0).astype(np.float32) / 255.0


@dataclass(frozen=True)
class MouthBank:
    """The indexed mouths of one video avatar."""

    patches: np.ndarray  # (N, PATCH_H, PATCH_W, 3) uint8, face-aligned
    features: np.ndarray  # (N, 4) float32
    points: np.ndarray  # (N, 68, 2) float32 landmarks in patch pixels
    masks: dict[int, np.ndarray] = field(default_factory=dict, compare=False)  # made on first use

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

    def mask(self, index: int) -> np.ndarray:
        """The paste mask of mouth `index` (made once, shared by every session)."""
        mask = self.masks.get(index)
        if mask is None:
            mask = self.masks[index] = lip_mask(self.points[index])
        return mask

    @property
    def rest(self) -> np.ndarray:
        """The features of the video's most closed mouth (its rest)."""
        return self.features[int(np.argmin(self.features[:, 1]))]

    def distance(self, wanted: np.ndarray, index: int) -> float:
        return float(np.sqrt((((self.features[index] - wanted) * FEATURE_WEIGHTS) ** 2).sum()))

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
        self._frame_masks: dict[int, np.ndarray] = {}  # paste masks of this avatar's own mouths, by frame
        self.last_choice: int | None = None  # bank index mostly shown in the last frame (None: the warp)

    def reset(self) -> None:
        self._previous = None
        self.last_choice = None

    def choose(self, rest_landmarks: np.ndarray, moved_landmarks: np.ndarray, widest: np.ndarray,
               roundest: np.ndarray, most_open: np.ndarray) -> tuple[np.ndarray, int, float] | None:
        """The real mouth (face-aligned patch, its index in the bank, and how far its
        lower lip sits below this frame's, in pixels, for the jaw to follow) for the shape that
        moves `rest_landmarks` to `moved_landmarks`, blended and smoothed; None when the video
        has none like it.

        The rig's range (its widest, roundest and most open shapes on this frame) is mapped
        onto the range of speech (SPREAD_RANGE, ROUND_RANGE, OPEN_RANGE), starting from the video's most closed mouth:
        a frame of a speaking video may itself be mid-word, the wanted shape is not relative
        to it."""
        rest = mouth_features(rest_landmarks)
        delta = mouth_features(moved_landmarks) - rest
        spreading = delta[0] > 0
        reach = mouth_features(most_open) - rest  # the rig's own range on this frame
        reach[0] = mouth_features(widest if spreading else roundest)[0] - rest[0]
        share = np.clip(delta / np.where(np.abs(reach) > 1e-3, reach, np.inf), -1.0, 1.5)
        span = np.array([SPREAD_RANGE if spreading else -ROUND_RANGE, *OPEN_RANGE], np.float32)
        wanted = self.bank.rest + share * span
        wanted[1] = max(float(wanted[1]), 0.0)  # pressed lips: no gap (never a negative one)
        inside = np.clip(wanted, self.bank.features.min(0), self.bank.features.max(0))
        order, distance = self.bank.nearest(inside, count=1)
        beyond = float(np.sqrt((((wanted - inside) * FEATURE_WEIGHTS) ** 2).sum()))
        if distance[0] > MAX_DISTANCE or beyond > MAX_BEYOND:
            self.reset()
            return None
        choice = int(order[0])
        if self.last_choice is not None and self.last_choice != choice:
            held = self.bank.distance(inside, self.last_choice)
            if held < distance[0] + HYSTERESIS:  # no flicker between two near-equal mouths
                choice = self.last_choice
        patch = self.bank.patches[choice].astype(np.float32)
        if self._previous is not None:
            patch = (1 - TEMPORAL_KEEP) * patch + TEMPORAL_KEEP * self._previous
        self._previous = patch
        self.last_choice = choice
        jaw_px = float(self.bank.features[choice, 3] - rest[3]) * FaceFrame.of(rest_landmarks).scale
        return patch, choice, jaw_px

    def paste(self, image: np.ndarray, frame_index: int, rest_landmarks: np.ndarray, patch: np.ndarray,
              choice: int) -> None:
        """Paste a chosen mouth into `image` (avatar frame `frame_index`, in place),
        colour-matched, over this frame's own mouth."""
        frame = FaceFrame.of(rest_landmarks)
        affine = frame.patch_to_image()
        here = cv2.warpAffine(image, affine, (PATCH_W, PATCH_H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        own = self._frame_masks.get(frame_index)
        if own is None:
            own = self._frame_masks[frame_index] = lip_mask(frame.to_patch(rest_landmarks))
        mask = np.maximum(self.bank.mask(choice), own)
        ring = ((mask > 0.05) & (mask < 0.6)).astype(np.uint8)
        if ring.any():  # colour match: the bank mouth's surroundings take this frame's colour
            gain = (np.array(cv2.mean(here, ring)[:3]) + 1.0) / (np.array(cv2.mean(patch, ring)[:3]) + 1.0)
            patch = patch * np.clip(gain, *COLOUR_GAIN).astype(np.float32)
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
