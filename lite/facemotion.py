"""Face motion with speech emphasis (the lite engine's beyond-the-mouth motion).

On an emphasised syllable the brows rise a little and the head dips in a small
nod, both on the shaper's slow `brow` spring, never in silence:

- `BrowLift`: a small backward warp of a box around the brows: each brow lifts by
  up to BROW_LIFT eye distances, the skin between brow and upper lid stretching
  with it and the forehead above following less and less; the lids and
  everything outside the box stay put.
- `HeadNod`: the head (a soft ellipse around the face, hair included) moves down
  by up to NOD_RATIO of the face height, fading out into the neck and background.

Both weights are zero at their boxes' edges, so the in-place paste is seamless.
Built once per avatar frame (`FaceMotion`), applied per frame.
"""
from __future__ import annotations

import cv2
import numpy as np

from avatars.facegeom import LEFT_EYE, RIGHT_EYE, face_axes, smoothstep

BROW_LIFT = 0.045  # at full emphasis, in eye distances
BROWS = ((17, 18, 19, 20, 21), (22, 23, 24, 25, 26))
UPPER_LIDS = ((37, 38), (43, 44))
FOREHEAD_FADE = 1.2  # the lift fades out this many brow-to-lid distances above the brow
NOD_RATIO = 0.012  # head dip at full emphasis, as a share of the face height
NOD_INNER, NOD_FADE = 0.85, 0.35  # the head ellipse moves whole inside 0.85 radii, fading out by 1.2


class BrowLift:
    """The brow warp of one avatar frame."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...]):
        lm = landmarks.astype(np.float32)
        self.ey = face_axes(lm)[1]
        self.eye_distance = float(np.linalg.norm(lm[RIGHT_EYE].mean(0) - lm[LEFT_EYE].mean(0)))
        brows = lm[17:27]
        lid_gap = float(np.mean(lm[[37, 38, 43, 44], 1]) - np.mean(brows[:, 1]))
        span = max(lid_gap, 2.0)
        height, width = shape[:2]
        x1 = int(max(np.floor(brows[:, 0].min() - 0.4 * span), 0))
        x2 = int(min(np.ceil(brows[:, 0].max() + 0.4 * span), width))
        y1 = int(max(np.floor(brows[:, 1].min() - FOREHEAD_FADE * span - 2), 0))
        y2 = int(min(np.ceil(lm[[37, 38, 43, 44], 1].max()), height))
        self.box = (x1, y1, x2, y2)
        gx, gy = np.meshgrid(np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32))
        self.grid_x, self.grid_y = gx, gy
        weight = np.zeros_like(gx)
        for brow, lids in zip(BROWS, UPPER_LIDS):
            points = lm[list(brow)]
            line = np.interp(gx, points[:, 0], points[:, 1])
            lid = float(lm[list(lids), 1].mean())
            below = 1.0 - smoothstep((gy - line) / np.maximum(lid - line, 1.0))  # 1 at the brow, 0 at the lid
            above = 1.0 - smoothstep((line - gy) / (FOREHEAD_FADE * span))
            vertical = np.where(gy >= line, below, above)
            reach = 0.35 * (points[-1, 0] - points[0, 0])
            across = smoothstep((gx - points[0, 0] + reach) / reach) * smoothstep((points[-1, 0] + reach - gx) / reach)
            weight = np.maximum(weight, vertical * across)
        self.weight = weight.astype(np.float32)

    def apply(self, image: np.ndarray, amount: float) -> None:
        """Lift the brows of `image` (this frame's picture) by `amount` 0..1, in place."""
        if amount <= 0.0:
            return
        x1, y1, x2, y2 = self.box
        lift = amount * BROW_LIFT * self.eye_distance * self.weight  # upward: sample from below
        map_x = self.grid_x + lift * self.ey[0]
        map_y = self.grid_y + lift * self.ey[1]
        image[y1:y2, x1:x2] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class HeadNod:
    """The nod warp of one avatar frame."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...]):
        lm = landmarks.astype(np.float32)
        self.ey = face_axes(lm)[1]
        face_width = float(np.ptp(lm[0:17, 0]))
        self.face_height = face_height = float(lm[8, 1] - lm[17:27, 1].min())
        centre = lm[[27, 8]].mean(0) - np.array([0.0, 0.25 * face_height], np.float32)
        rx, ry = 0.95 * face_width, 0.95 * face_height
        height, width = shape[:2]
        reach = NOD_INNER + NOD_FADE  # the weight is zero beyond this many radii
        x1, y1 = int(max(centre[0] - reach * rx, 0)), int(max(centre[1] - reach * ry, 0))
        x2, y2 = int(min(centre[0] + reach * rx, width)), int(min(centre[1] + reach * ry, height))
        self.box = (x1, y1, x2, y2)
        gx, gy = np.meshgrid(np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32))
        self.grid_x, self.grid_y = gx, gy
        dist = np.sqrt(((gx - centre[0]) / rx) ** 2 + ((gy - centre[1]) / ry) ** 2)
        weight = 1.0 - smoothstep((dist - NOD_INNER) / NOD_FADE)
        weight *= 1.0 - smoothstep((gy - lm[8, 1]) / (0.3 * face_height))  # the neck stays
        self.weight = weight.astype(np.float32)

    def apply(self, image: np.ndarray, amount: float) -> None:
        if amount <= 0.0:
            return
        x1, y1, x2, y2 = self.box
        dip = amount * NOD_RATIO * self.face_height * self.weight  # downward: sample from above
        map_x = self.grid_x - dip * self.ey[0]
        map_y = self.grid_y - dip * self.ey[1]
        image[y1:y2, x1:x2] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FaceMotion:
    """Brows and nod of one avatar frame, applied together with one emphasis amount."""

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, ...]):
        self.brows = BrowLift(landmarks, shape)
        self.nod = HeadNod(landmarks, shape)

    def apply(self, image: np.ndarray, amount: float) -> None:
        """Move the face of `image` (this frame's picture) for emphasis `amount` 0..1, in place."""
        self.brows.apply(image, amount)
        self.nod.apply(image, amount)
