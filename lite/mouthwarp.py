"""The lite engine's face rig: a landmark-driven warp of the lower face.

For every avatar frame, `MouthRig` precomputes (once per avatar, shared by all
sessions) three displacement basis fields over a box around mouth and jaw,
all in face-aligned coordinates (u along the mouth, v down the face):

  jaw    everything below the lip seam moves down, the lower lip most in the
         middle and the jaw as a rotating block, fading out below the chin;
  lips   the upper lip lifts a little and the lower lip drops a little more;
  width  the mouth corners move out (spread) or in (rounded, further than
         they spread: rounded lips also push forward, so the mouth narrows);
  press  the upper lip comes down and the lower lip up to meet in the middle
         of the photo's resting gap, closing it (m, b, p; f and v in part).

The seam is the lower inner lip line: above it nothing follows the jaw (so
teeth already visible in the photo stay with the upper jaw); across it the
jaw field steps sharply between the corners and smoothly beyond them. A frame
is then one weighted sum of the bases, one cv2.remap of the box, a shaded
mouth cavity (with upper teeth when the photo shows none) painted into the gap
that opens along the seam, and a paste-back with the avatar's blend mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from blending import BlendPlan, paste_back
from lite.facemotion import FaceMotion
from avatars.facegeom import JAW, MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP, CHIN, face_axes, smoothstep, to_face_coords
from speech.visemes import MouthShape

JAW_DROP = 0.34  # jaw opening at jaw=1, in mouth half-widths
LIP_PART = 0.22  # extra lip parting at lips=1
SPREAD_SHIFT = 0.14  # outward corner movement at width=+1
ROUND_SHIFT = 0.32  # inward corner movement at width=-1
PRESS_OVERLAP = 0.03  # pressed lips squeeze a little past their meeting line (mouth half-widths)
UPPER_LIP_SHARE = 0.35  # of the lip parting, how much is the upper lip lifting
SEAM = (48, 60, 67, 66, 65, 64, 54)  # outer corner, lower inner lip, outer corner
UPPER_INNER = (48, 60, 61, 62, 63, 64, 54)  # outer corner, upper inner lip, outer corner
SEAM_SAMPLES = 25
REST_OPEN_RATIO = 0.12  # inner-lip gap / mouth half-width above which the photo already shows teeth
SUBPIXEL_BITS = 3
LANDMARK_PROBE = 0.12  # lip landmarks read the fields this far (mouth half-widths) off the lip line
CAVITY_TINT = np.array([0.2, 0.2, 0.36], np.float32)  # BGR: the mouth's inside is a dark, reddish lip colour


def _smooth_seam(points: np.ndarray, samples: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The lip seam through its landmarks as a smooth curve v(u) (dense, increasing u)."""
    u = np.maximum.accumulate(points[:, 0]) + np.arange(len(points)) * 1e-3
    dense_u = np.linspace(u[0], u[-1], samples)
    dense_v = np.interp(dense_u, u, points[:, 1])
    kernel = np.array([1, 4, 6, 4, 1], np.float64) / 16
    for _ in range(3):
        dense_v[2:-2] = np.convolve(dense_v, kernel, mode="valid")
    return dense_u.astype(np.float32), dense_v.astype(np.float32)


def _lip_profile(u: np.ndarray, half_width: float) -> np.ndarray:
    """How much of the lips' vertical motion a point along the mouth gets: 1 mid, 0 at the corners."""
    return (1.0 - np.clip(np.abs(u) / half_width, 0, 1) ** 2) ** 0.6


@dataclass(frozen=True)
class MouthColors:
    cavity: np.ndarray  # BGR float32
    tongue: np.ndarray
    teeth: np.ndarray
    draw_teeth: bool


class MouthRig:
    """Everything one avatar frame needs to render a mouth shape quickly."""

    def __init__(self, frame: np.ndarray, landmarks: np.ndarray, crop_box: np.ndarray, mask: np.ndarray):
        self.frame = frame
        lm = landmarks.astype(np.float32)
        self.ex, self.ey = face_axes(lm)
        self.origin = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2
        local = to_face_coords(lm, self.origin, self.ex, self.ey)
        self.half_width = mw = max(float(local[MOUTH_RIGHT, 0] - local[MOUTH_LEFT, 0]) / 2, 2.0)
        self.box = self._warp_box(lm, frame.shape)
        x1, y1, x2, y2 = self.box
        gx, gy = np.meshgrid(np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32))
        self.grid_x, self.grid_y = gx, gy
        u = (gx - self.origin[0]) * self.ex[0] + (gy - self.origin[1]) * self.ex[1]
        v = (gx - self.origin[0]) * self.ey[0] + (gy - self.origin[1]) * self.ey[1]

        seam_u, seam_v = _smooth_seam(local[list(SEAM)])
        v_seam = np.interp(u, seam_u, seam_v)
        v_nose = float(local[NOSE_TIP, 1])
        v_chin = float(local[CHIN, 1])
        chin_span = max(v_chin - float(seam_v.max()), 4.0)

        # Lower-part weight: a sharp step along the seam between the corners,
        # widening smoothly beyond them so the cheeks stretch instead of tearing.
        beyond = np.maximum(np.abs(u) - mw, 0.0)
        tau = 0.7 + 1.0 * beyond
        lower = smoothstep(0.5 + (v - v_seam) / (2 * tau))
        lip_profile = _lip_profile(u, mw)
        lipness = 1.0 - smoothstep((v - v_seam) / (0.6 * chin_span))
        jaw_block = self._jaw_block(local, u, v, v_nose, v_chin, mw)
        below_chin = 1.0 - smoothstep((v - v_chin) / (1.0 * chin_span))
        taper = self._edge_taper(v.shape) * self._mask_weight(crop_box, mask)
        self.jaw = (lower * (lipness * lip_profile + (1 - lipness) * jaw_block) * below_chin * taper).astype(np.float32)

        up = smoothstep((v - v_nose) / max(float(seam_v.min()) - v_nose, 1.0))
        down = 1.0 - smoothstep((v - v_seam) / (0.8 * chin_span))
        self.lips = ((-UPPER_LIP_SHARE * (1 - lower) * up + (1 - UPPER_LIP_SHARE) * lower * down)
                     * lip_profile * taper).astype(np.float32)

        self.press, top_u, top_v = self._press_field(local, u, v, seam_u, seam_v, v_nose, chin_span, mw, lip_profile,
                                                     taper)

        along = np.where(np.abs(u) <= mw, u / mw, np.sign(u) * np.exp(-(((np.abs(u) - mw) / (0.6 * mw)) ** 2)))
        self.width = (along * np.exp(-(((v - v_seam) / (0.55 * mw)) ** 2)) * taper).astype(np.float32)

        # The gap along the seam, sampled once: per sample, the unit movement of its
        # upper edge (lips basis, above the seam) and lower edge (jaw + lips, below).
        self.sample_u = np.linspace(-mw, mw, SEAM_SAMPLES).astype(np.float32)
        self.sample_v = np.interp(self.sample_u, seam_u, seam_v).astype(np.float32)
        profile = _lip_profile(self.sample_u, mw)
        self.edge_up = (-UPPER_LIP_SHARE * profile).astype(np.float32)
        self.edge_jaw = profile.astype(np.float32)
        self.edge_down = ((1 - UPPER_LIP_SHARE) * profile).astype(np.float32)
        self.edge_width = (self.sample_u / mw).astype(np.float32)
        rest_gap = np.maximum(self.sample_v - np.interp(self.sample_u, top_u, top_v), 0.0)
        self.edge_press = (-rest_gap / 2).astype(np.float32)  # pressed, the new opening starts at the meeting line
        self.colors = self._colors(frame, lm, local)
        self.plan = BlendPlan.build(frame.shape, self.box, crop_box, mask)
        self.landmarks = lm
        self.face_motion = FaceMotion(lm, frame.shape)
        self._landmark_fields = self._fields_at_landmarks(lm)

    def _fields_at_landmarks(self, lm: np.ndarray) -> np.ndarray:
        """(68, 4): jaw, lips, width and press field values that move each landmark.

        The fields step across the lips, so lower-lip points read them a little
        below themselves and upper-lip points a little above."""
        offset = np.zeros(68, np.float32)
        offset[list(range(55, 60)) + [65, 66, 67]] = LANDMARK_PROBE
        offset[list(range(49, 54)) + [61, 62, 63]] = -LANDMARK_PROBE
        points = lm + offset[:, None] * self.half_width * self.ey
        x1, y1, x2, y2 = self.box
        cols = np.clip(np.round(points[:, 0]).astype(int) - x1, 0, x2 - x1 - 1)
        rows = np.clip(np.round(points[:, 1]).astype(int) - y1, 0, y2 - y1 - 1)
        inside = (points[:, 0] >= x1) & (points[:, 0] < x2) & (points[:, 1] >= y1) & (points[:, 1] < y2)
        fields = np.stack([field[rows, cols] for field in (self.jaw, self.lips, self.width, self.press)], axis=1)
        return (fields * inside[:, None]).astype(np.float32)

    # ---- preparation ------------------------------------------------------
    @staticmethod
    def _press_field(local, u, v, seam_u, seam_v, v_nose, chin_span, mw, lip_profile, taper) -> np.ndarray:
        """Unit press: above the middle of the resting gap things move down by half the
        gap, below it up by half, fading towards the nose and the chin."""
        top_u, top_v = _smooth_seam(local[list(UPPER_INNER)])
        upper = np.interp(u, top_u, top_v)
        lower = np.interp(u, seam_u, seam_v)
        half_gap = np.maximum(lower - upper, 0.0) / 2 + PRESS_OVERLAP * mw * lip_profile
        middle = (upper + lower) / 2
        side = smoothstep(0.5 + (v - middle) / 1.4)  # 0 above the meeting line, 1 below
        up_fade = smoothstep((v - v_nose) / max(float(np.min(top_v)) - v_nose, 1.0))
        down_fade = 1.0 - smoothstep((v - middle) / (0.7 * chin_span))
        return (half_gap * ((1 - side) * up_fade - side * down_fade) * taper).astype(np.float32), top_u, top_v

    def _warp_box(self, lm: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        chin_down = lm[CHIN] + self.ey * 0.8 * float(np.linalg.norm(lm[CHIN] - self.origin))
        points = np.concatenate([lm[2:15], lm[31:36], chin_down[None]])
        margin = 0.08 * float(np.ptp(lm[JAW, 0]))
        x1, y1 = np.floor(points.min(0) - margin).astype(int)
        x2, y2 = np.ceil(points.max(0) + margin).astype(int)
        height, width = shape[:2]
        return max(int(x1), 0), max(int(y1), 0), min(int(x2), width), min(int(y2), height)

    @staticmethod
    def _jaw_block(local, u, v, v_nose, v_chin, mw) -> np.ndarray:
        """The mandible: 1 inside the jaw line (less near the ears, where it pivots)."""
        left, right = local[2:9], local[8:15][::-1]
        vq = np.clip(v, None, float(local[7, 1]))
        u_left = np.interp(vq, left[:, 1], left[:, 0])
        u_right = np.interp(vq, right[:, 1], right[:, 0])
        inside = np.minimum(u - u_left, u_right - u)
        block = smoothstep(1.0 + inside / (0.5 * mw))
        rotation = 0.35 + 0.65 * smoothstep((v - v_nose) / max(v_chin - v_nose, 1.0))
        centre = np.exp(-((u / (1.2 * mw)) ** 2))
        return block * (rotation + (1 - rotation) * centre)

    @staticmethod
    def _edge_taper(shape: tuple[int, int], ramp: int = 4) -> np.ndarray:
        height, width = shape
        ty = np.minimum(np.arange(height), np.arange(height)[::-1]) / ramp
        tx = np.minimum(np.arange(width), np.arange(width)[::-1]) / ramp
        return np.outer(smoothstep(ty), smoothstep(tx)).astype(np.float32)

    def _mask_weight(self, crop_box: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The blend mask over the warp box, so nothing moves where it would not be pasted."""
        x1, y1, x2, y2 = self.box
        cx1, cy1 = int(crop_box[0]), int(crop_box[1])
        weight = np.zeros((y2 - y1, x2 - x1), np.float32)
        sx1, sy1 = max(x1, cx1), max(y1, cy1)
        sx2, sy2 = min(x2, cx1 + mask.shape[1]), min(y2, cy1 + mask.shape[0])
        if sx2 > sx1 and sy2 > sy1:
            weight[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = mask[sy1 - cy1 : sy2 - cy1, sx1 - cx1 : sx2 - cx1] / 255.0
        return smoothstep(weight * 1.25)

    def _colors(self, frame: np.ndarray, lm: np.ndarray, local: np.ndarray) -> MouthColors:
        lips = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillPoly(lips, [np.round(lm[48:60]).astype(np.int32)], 255)
        cv2.fillPoly(lips, [np.round(lm[60:68]).astype(np.int32)], 0)
        lip_color = np.median(frame[lips > 0], axis=0).astype(np.float32) if (lips > 0).any() else \
            np.array([90, 90, 160], np.float32)
        skin = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillPoly(skin, [np.round(lm[[1, 2, 3, 31, 33, 35, 13, 14, 15]]).astype(np.int32)], 255)
        cv2.fillPoly(skin, [np.round(lm[48:60]).astype(np.int32)], 0)
        skin_color = np.median(frame[skin > 0], axis=0).astype(np.float32) if (skin > 0).any() else lip_color
        gap = float(np.mean(local[[65, 66, 67], 1] - local[[63, 62, 61], 1]))
        draw_teeth = gap < REST_OPEN_RATIO * self.half_width
        brightness = np.clip(float(skin_color.mean()) / 170.0, 0.55, 1.05)
        teeth = np.array([222, 228, 232], np.float32) * brightness
        return MouthColors(cavity=lip_color * CAVITY_TINT + 2, tongue=lip_color * 0.7, teeth=teeth, draw_teeth=draw_teeth)

    # ---- per frame ---------------------------------------------------------
    def _amounts(self, shape: MouthShape) -> tuple[float, float, float]:
        """Pixels of jaw drop, lip parting and corner movement for a shape."""
        apart = (1.0 - shape.press) ** 2  # pressing lips hold together against the jaw
        drop = shape.jaw * apart * JAW_DROP * self.half_width
        part = shape.lips * apart * LIP_PART * self.half_width
        side = shape.width * (SPREAD_SHIFT if shape.width > 0 else ROUND_SHIFT) * self.half_width
        return drop, part, side

    def jaw_shape(self, drop_px: float, wanted: MouthShape) -> MouthShape:
        """Under a pasted real mouth: the jaw lowered by `drop_px` (never raised past the frame's:
        the neck below would be stretched) and the frame's own lips pressed as wanted."""
        return MouthShape(jaw=max(drop_px, 0.0) / (JAW_DROP * self.half_width), press=wanted.press)

    def moved_landmarks(self, shape: MouthShape) -> np.ndarray:
        """Where `shape` puts this frame's landmarks (what a real mouth for it must look like)."""
        drop, part, side = self._amounts(shape)
        fields = self._landmark_fields
        dv = drop * fields[:, 0] + part * fields[:, 1] + shape.press * fields[:, 3]
        du = side * fields[:, 2]
        return self.landmarks + du[:, None] * self.ex + dv[:, None] * self.ey

    def render(self, shape: MouthShape) -> np.ndarray:
        """The full frame with the mouth in `shape` (a new array)."""
        drop, part, side = self._amounts(shape)
        dv = drop * self.jaw + part * self.lips + shape.press * self.press
        du = side * self.width
        map_x = self.grid_x - (du * self.ex[0] + dv * self.ey[0])
        map_y = self.grid_y - (du * self.ex[1] + dv * self.ey[1])
        patch = cv2.remap(self.frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._paint_cavity(patch, drop, part, side, shape.press)
        image = paste_back(self.frame, patch, self.plan)
        self.face_motion.apply(image, shape.brow)
        return image

    def _paint_cavity(self, patch: np.ndarray, drop: float, part: float, side: float, press: float) -> None:
        seam_v = self.sample_v + press * self.edge_press
        upper_v = seam_v + part * self.edge_up
        lower_v = seam_v + drop * self.edge_jaw + part * self.edge_down
        gap = lower_v - upper_v
        if float(gap.max()) < 0.6:
            return
        u = self.sample_u + side * self.edge_width
        x1, y1 = self.box[0], self.box[1]
        def to_patch(uu, vv):
            return np.stack([self.origin[0] + uu * self.ex[0] + vv * self.ey[0] - x1,
                             self.origin[1] + uu * self.ex[1] + vv * self.ey[1] - y1], axis=1)
        outline = np.concatenate([to_patch(u, upper_v), to_patch(u, lower_v)[::-1]])
        bx1, by1 = np.floor(outline.min(0)).astype(int) - 2
        bx2, by2 = np.ceil(outline.max(0)).astype(int) + 3
        height, width = patch.shape[:2]
        bx1, by1, bx2, by2 = max(bx1, 0), max(by1, 0), min(bx2, width), min(by2, height)
        if bx2 <= bx1 or by2 <= by1:
            return
        region_h, region_w = by2 - by1, bx2 - bx1
        cover = np.zeros((region_h, region_w), np.uint8)
        points = np.round((outline - [bx1, by1]) * (1 << SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillPoly(cover, [points], 255, lineType=cv2.LINE_AA, shift=SUBPIXEL_BITS)
        alpha = cv2.GaussianBlur(cover, (3, 3), 0).astype(np.float32)[..., None] / 255.0

        # Shade by position inside the opening: dark throat, tongue low, teeth high.
        gx = self.grid_x[by1:by2, bx1:bx2] - self.origin[0]
        gy = self.grid_y[by1:by2, bx1:bx2] - self.origin[1]
        pu = gx * self.ex[0] + gy * self.ex[1]
        pv = gx * self.ey[0] + gy * self.ey[1]
        top = np.interp(pu, u, upper_v)
        span = np.maximum(np.interp(pu, u, gap), 1e-3)
        depth = np.clip((pv - top) / span, 0, 1)[..., None]
        edge = np.clip(np.abs(pu) / (self.half_width + abs(side)), 0, 1)[..., None]
        colors = self.colors
        shade = colors.cavity * (1.0 - 0.4 * edge ** 2) * (0.75 + 0.35 * np.sin(np.pi * depth))
        tongue = smoothstep((depth - 0.55) / 0.45) * min(1.0, float(gap.max()) / (0.5 * self.half_width)) * 0.7
        shade = shade + tongue * (colors.tongue - shade)
        if colors.draw_teeth:
            tooth_h = np.minimum(0.2 * self.half_width, 0.55 * span)[..., None]
            below_top = (pv - top)[..., None]
            teeth = (1.0 - smoothstep((below_top - tooth_h + 0.5) / 1.2)) * (1.0 - smoothstep((edge - 0.62) / 0.2))
            tooth_color = colors.teeth * (1.0 - 0.3 * edge ** 2) * (0.92 + 0.08 * np.clip(below_top / np.maximum(tooth_h, 1), 0, 1))
            shade = shade + teeth * (tooth_color - shade)
        region = patch[by1:by2, bx1:bx2].astype(np.float32)
        region += alpha * (shade - region)
        patch[by1:by2, bx1:bx2] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
