"""A still photo -> a short idle loop: subtle head motion, breathing and blinks.

The loop is played ping-pong (forward, then backward) by the engines, so every
motion is a sum of cos(pi*k*t) terms over t in [0, 1]: they all have zero
velocity at both ends, so the turn-around points are invisible. Each frame is
one backward warp of the photo (cv2.remap): the head moves as a soft-edged
rigid patch around the neck, the chest rises, and the upper eyelids slide down
over the eyes (the photo's own lid skin, stretched and smoothed along the
lid, with a soft lash line: no painted patch). Landmarks are carried along
analytically, so the generated frames need no second detection pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatars.facegeom import JAW, face_axes, smoothstep

HEAD_SHIFT_RATIO = 0.012  # head sway amplitude as a fraction of the face width
HEAD_ROLL_DEG = 0.9
BREATH_RATIO = 0.01  # chest rise as a fraction of the face width
BLINK_PROFILE = (0.35, 0.8, 1.0, 0.85, 0.55, 0.25, 0.08)  # lid closure per frame at 25 fps (~280 ms)
BLINK_AT = 0.45  # where in the loop the blink happens (fraction of its length)
LID_FOLD = 0.75  # the lid skin that slides over the eye starts this far from the lid towards the brow
LID_SKIN = 0.6  # the lid skin that covers the eye ends this share of the eye opening above the lid line
LID_OVERSHOOT = 0.3  # dlib's lower lid points sit inside the lower lashes
LASH_PX = 0.9  # half-width of the closed lid's lash line
LASH_SHADE = 0.45
LID_SMOOTH = 0.05  # smoothing along the closed lid, as a share of the face width
EYES = ((36, 37, 38, 39, 40, 41, 17, 21), (42, 43, 44, 45, 46, 47, 22, 26))  # corners, lids, brow ends


@dataclass(frozen=True)
class IdlePose:
    """Motion of one loop frame, in pixels / degrees / closure fraction."""

    shift: tuple[float, float]
    roll_deg: float
    breath: float
    blink: float


def loop_poses(count: int, face_width: float, fps: int) -> list[IdlePose]:
    """Deterministic, natural-looking motion curves with zero velocity at both ends."""
    t = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    amp = HEAD_SHIFT_RATIO * face_width
    sway_x = amp * (0.7 * np.cos(np.pi * t) + 0.3 * np.cos(3 * np.pi * t))
    sway_y = amp * 0.5 * (np.cos(2 * np.pi * t) - 0.4 * np.cos(np.pi * t))
    roll = HEAD_ROLL_DEG * (0.4 * np.cos(2 * np.pi * t) - 0.6 * np.cos(np.pi * t))
    breath = BREATH_RATIO * face_width * 0.5 * (1 - np.cos(2 * np.pi * t))
    blink = np.zeros(count)
    profile = np.array(BLINK_PROFILE)
    if fps != 25:
        profile = np.interp(np.linspace(0, len(profile) - 1, max(2, round(len(profile) * fps / 25))),
                            np.arange(len(profile)), profile)
    if count >= len(profile) + 4:
        start = min(int(BLINK_AT * count), count - len(profile) - 2)
        blink[start : start + len(profile)] = profile
    return [IdlePose((float(sway_x[i]), float(sway_y[i])), float(roll[i]), float(breath[i]), float(blink[i]))
            for i in range(count)]


def _arc(u: np.ndarray, rel: np.ndarray, corner_a: int, corner_b: int, middle: tuple[int, int]) -> np.ndarray:
    """A lid line as a smooth arc from corner to corner through the mean of its middle points."""
    start, end = rel[corner_a], rel[corner_b]
    t = np.clip((u - start[0]) / max(float(end[0] - start[0]), 1e-3), 0, 1)
    chord = start[1] + t * (end[1] - start[1])
    mid = rel[list(middle)].mean(0)
    tm = np.clip((mid[0] - start[0]) / max(float(end[0] - start[0]), 1e-3), 0.2, 0.8)
    bulge = (mid[1] - (start[1] + tm * (end[1] - start[1]))) / (4 * tm * (1 - tm))
    return chord + 4 * bulge * t * (1 - t)


class IdleAnimator:
    """Warps one photo with known landmarks into idle-loop frames."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray):
        self.image = image
        self.landmarks = landmarks.astype(np.float32)
        height, width = image.shape[:2]
        self.grid_x, self.grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        jaw = self.landmarks[JAW]
        self.face_width = float(np.ptp(jaw[:, 0]))
        chin = self.landmarks[8]
        brow_y = float(self.landmarks[17:27, 1].min())
        face_height = float(chin[1] - brow_y)
        self.pivot = chin + np.array([0.0, 0.35 * face_height], np.float32)  # the neck
        self.head_weight = self._head_weight(face_height)
        self.chest_weight = smoothstep((self.grid_y - (chin[1] + 0.3 * face_height)) / (0.8 * face_height))
        self.ex, self.ey = face_axes(self.landmarks)

    def _head_weight(self, face_height: float) -> np.ndarray:
        """1 over the head (with hair), fading smoothly into the background and neck."""
        center = self.landmarks[[27, 8]].mean(0) - np.array([0.0, 0.25 * face_height], np.float32)
        rx, ry = 0.95 * self.face_width, 0.95 * face_height
        dist = np.sqrt(((self.grid_x - center[0]) / rx) ** 2 + ((self.grid_y - center[1]) / ry) ** 2)
        return (1.0 - smoothstep((dist - 0.85) / 0.6)).astype(np.float32)

    def _head_displacement(self, pose: IdlePose, x: np.ndarray, y: np.ndarray,
                           weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angle = np.deg2rad(pose.roll_deg)
        cos, sin = float(np.cos(angle)), float(np.sin(angle))
        rx, ry = x - self.pivot[0], y - self.pivot[1]
        dx = (cos * rx - sin * ry - rx + pose.shift[0]) * weight
        dy = (sin * rx + cos * ry - ry + pose.shift[1] - 0.6 * pose.breath) * weight
        return dx, dy

    def _eyelids(self, x: np.ndarray, y: np.ndarray, closure: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel: the backward shift down the face that slides each upper lid down by
        `closure` of the eye opening, the lid's coverage and the shade of its lash line.

        The photo's own lid skin, from the brow fold down to just above the lashes, is
        stretched over the eye, so a closing eye shows real skin moving down (an eyelid),
        never a flat painted patch."""
        shift = np.zeros_like(x)
        lash = np.zeros_like(x)
        cover = np.zeros_like(x)
        if closure <= 0:
            return shift, cover, lash
        lm = self.landmarks
        for corner_a, top_a, top_b, corner_b, bottom_b, bottom_a, brow_a, brow_b in EYES:
            origin = lm[corner_a]
            u = (x - origin[0]) * self.ex[0] + (y - origin[1]) * self.ex[1]
            v = (x - origin[0]) * self.ey[0] + (y - origin[1]) * self.ey[1]
            rel = (lm - origin) @ np.stack([self.ex, self.ey], axis=1)
            width = rel[corner_b, 0]
            upper = _arc(u, rel, corner_a, corner_b, (top_a, top_b))
            lower = _arc(u, rel, corner_a, corner_b, (bottom_a, bottom_b))
            full = np.clip(lower - upper, 0, None)
            brow = np.interp(u, [0, width], [rel[brow_a, 1], rel[brow_b, 1]])
            fold = upper - LID_FOLD * (upper - brow)
            skin = upper - LID_SKIN * full  # above the lashes and the crease shadow
            edge = upper + full * closure * (1.0 + LID_OVERSHOOT)  # closed, it covers the lower lashes too
            across = smoothstep((u + 0.12 * width) / (0.12 * width)) * smoothstep((1.12 * width - u) / (0.12 * width))
            here = (v >= fold) & (v <= edge) & (full > 0.5)
            source = fold + (v - fold) * (skin - fold) / np.maximum(edge - fold, 1e-3)  # [fold, edge] <- [fold, skin]
            shift += np.where(here, (v - source) * across, 0.0).astype(np.float32)
            line = np.exp(-(((v - edge + LASH_PX) / LASH_PX) ** 2)) * across * min(1.0, 1.5 * closure)
            lash = np.maximum(lash, np.where(full > 0.5, line, 0.0).astype(np.float32))
            lid = smoothstep((v - upper + 1.0) / 2.0) * (1.0 - smoothstep((v - edge) / 1.0)) * across
            cover = np.maximum(cover, np.where(full > 0.5, lid, 0.0).astype(np.float32))
        return shift, cover, lash

    def frame(self, pose: IdlePose) -> tuple[np.ndarray, np.ndarray]:
        """(frame, landmarks) for one pose."""
        dx, dy = self._head_displacement(pose, self.grid_x, self.grid_y, self.head_weight)
        dy = dy - pose.breath * self.chest_weight
        src_x, src_y = self.grid_x - dx, self.grid_y - dy
        lid, cover, lash = self._eyelids(src_x, src_y, pose.blink)
        src_x = (src_x - lid * self.ey[0]).astype(np.float32)
        src_y = (src_y - lid * self.ey[1]).astype(np.float32)
        image = cv2.remap(self.image, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if pose.blink > 0:
            # The stretched skin varies along the lid only: smooth it that way (no streaks).
            along = max(3, int(LID_SMOOTH * self.face_width) | 1)
            smooth = cv2.GaussianBlur(image, (along, 1), 0).astype(np.float32)
            lidded = image + cover[..., None] * (smooth - image)
            image = np.clip(lidded * (1.0 - LASH_SHADE * lash)[..., None] + 0.5, 0, 255).astype(np.uint8)
        return image, self._moved_landmarks(pose)

    def _moved_landmarks(self, pose: IdlePose) -> np.ndarray:
        """Forward-map the landmarks (fixed-point inverse of the backward warp)."""
        points = self.landmarks.copy()
        lx, ly = self.landmarks[:, 0], self.landmarks[:, 1]
        weight = cv2.remap(self.head_weight, lx[None], ly[None], cv2.INTER_LINEAR)[0]
        for _ in range(3):
            dx, dy = self._head_displacement(pose, points[:, 0], points[:, 1], weight)
            points = np.stack([lx + dx, ly + dy], axis=1).astype(np.float32)
        if pose.blink > 0:
            for corner_a, top_a, top_b, corner_b, bottom_b, bottom_a, _, _ in EYES:
                for top, bottom in ((top_a, bottom_a), (top_b, bottom_b)):
                    points[top] += (points[bottom] - points[top]) * pose.blink
        return points
